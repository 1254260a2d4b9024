"""Index-build throughput on Ray against the local build, measured in the same run.

The same corpus (the first ``--articles`` default-corpus articles as JSONL, the shipped passage vectors switched off
so every passage is embedded) is built with ``build_index`` locally (one process, torch's own threads) and with
``--ray`` on a local Ray with 1..``--max-workers`` embedding workers (one CPU each). Rounds alternate the methods; the
best round of each is kept, so the ratios hold up under load from other processes. Reported: passages/s of the
embedding step (from the build's own log line), whole-build seconds, and each Ray setting against the local build.
Every Ray build is checked to give the local build's vectors (within 1e-5).

Run: ``python benchmarks/ray_build_scale.py`` (writes benchmarks/results/ray_build_scale.json).
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

os.environ["ASYMMETRY_PREBUILT_VECTORS"] = "none"  # embed every passage (the shipped table would skip them)

from asymmetry.atomic import atomic_write_json
from asymmetry.cluster import connect
from asymmetry.index import build_index
from asymmetry.index.corpus import open_corpus


class _Rate(logging.Handler):
    """Catches the build's "embedded N passages ... (R passages/s)" line."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.rate = None

    def emit(self, record):
        m = re.search(r"embedded (\d+) passages .*in ([\d.]+)s", record.getMessage())
        if m:
            self.rate = int(m.group(1)) / max(float(m.group(2)), 1e-9)


def _build(corpus: Path, out: Path, ray_workers: int | None) -> tuple[float, float]:
    """(embedding passages/s, whole-build seconds) of one fresh build."""
    shutil.rmtree(out, ignore_errors=True)
    handler = _Rate()
    logger = logging.getLogger("asymmetry.index")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    t = time.perf_counter()
    try:
        build_index(str(corpus), out, index_type="flat", shard_size=64, progress=False,
                    ray=ray_workers is not None, ray_workers=ray_workers)
    finally:
        logger.removeHandler(handler)
    return handler.rate, time.perf_counter() - t


def _vectors(root: Path) -> np.ndarray:
    index = faiss.read_index(str(root / "index.faiss"))
    return index.reconstruct_n(0, index.ntotal)  # (N, D)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--articles", type=int, default=400)
    ap.add_argument("--max-workers", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "ray_build_scale.json"))
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="ray-build-scale-"))
    corpus = work / "corpus.jsonl"
    arts = itertools.islice(open_corpus("default"), 200, 200 + args.articles)  # not the test slice
    corpus.write_text("".join(json.dumps({"title": a.title, "text": a.text, "url": a.url}) + "\n" for a in arts))
    ray = connect(num_cpus=args.max_workers, object_store_mb=512)
    settings = [None] + list(range(1, args.max_workers + 1))  # None: the local build
    best: dict[str, dict] = {}
    reference = None
    for r in range(args.rounds):
        for workers in settings:
            name = "local" if workers is None else f"ray x{workers}"
            rate, secs = _build(corpus, work / "index", workers)
            vecs = _vectors(work / "index")
            if reference is None:
                reference = vecs
            assert float(np.abs(vecs - reference).max()) < 1e-5, f"{name}: vectors differ from the local build's"
            print(f"round {r + 1} {name:>8}: {rate:.1f} passages/s embedding, {secs:.1f} s whole build")
            if name not in best or rate > best[name]["passages_per_s"]:
                best[name] = {"passages_per_s": rate, "build_s": round(secs, 2), "workers": workers or 0}
    ray.shutdown()
    passages = int(reference.shape[0])
    base = best["local"]["passages_per_s"]
    print(f"\n{passages} passages from {args.articles} articles, best of {args.rounds} rounds:")
    for name, m in best.items():
        m["vs_local"] = round(m["passages_per_s"] / base, 3)
        print(f"  {name:>8}: {m['passages_per_s']:.1f} passages/s ({m['vs_local']:.2f}x local), "
              f"{m['build_s']:.1f} s build")
    atomic_write_json(Path(args.out), {"passages": passages, "articles": args.articles, "rounds": args.rounds,
                                       "cpus": os.cpu_count(), "results": best}, indent=1)
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
