"""Passage embedding backends: torch (sentence-transformers) vs ONNX Runtime fp32 vs ONNX Runtime int8 (issue 15.4).

The bar for adopting an ONNX backend in index builds: >= 2x the torch passages/s with SQuAD recall@5 within 1 point.

* Export (``asymmetry.embedder``): sentence-transformers' own ``backend="onnx"`` needs optimum-onnx, whose newest
  release (0.1.0) requires transformers < 4.58 while sentence-transformers 6.x requires transformers >= 5, so it
  cannot be installed beside them. ``Embedder(backend="onnx"|"onnx-int8")`` therefore exports the same graph with
  ``torch.onnx.export`` (the transformer; mean pooling and normalisation in numpy, as the model's modules say) and
  quantizes it with onnxruntime's ``quantize_dynamic`` using optimum's ``AutoQuantizationConfig.avx512_vnni(
  is_static=False)`` settings, into ``$ASYMMETRY_HOME/onnx/`` (atomically, keyed by the weights' SHA-256). Needs the
  ``onnx`` package (``pip install -e '.[onnx]'``).
* Throughput: the same default-corpus passages (spread over the corpus), embedded through the index build's own
  ``embed_passages`` at the build's batch size, backends interleaved over ``--rounds`` (order rotated each round),
  best round each, as a ratio against torch. Both runtimes get the same number of threads.
* Agreement: max |difference| and min/mean cosine of each ONNX backend's vectors against torch's on those passages
  (an index built with one backend is searched with query vectors of the other only if they agree).
* Recall: SQuAD recall@5 of the held-out questions (``load_qa("squad", "heldout")``) with
  ``benchmarks/retrieval_recall.py``'s corpus and measurement, one flat index per backend (queries embedded with the
  index's backend), plus the torch index searched with int8 query vectors (a mixed setup).

Measured (2 shared CPU cores, 256 passages of 78 words on average, batch 64, best of 4 interleaved rounds; 516
held-out questions over 803 paragraphs = 869 passages): torch 8.9 passages/s, onnx 14.8 (1.67x), onnx-int8 25.9
(2.92x; 2.49x in an earlier run). onnx fp32 vectors equal torch's (max |diff| 1.5e-7); int8's differ (max |diff| 0.027,
cosine min 0.991, mean 0.995). Dense recall@5: torch 0.919, onnx 0.919, onnx-int8 0.921 (recall@1 0.764 -> 0.744);
hybrid recall@5 0.983 for all three. So onnx-int8 meets the bar and is ``[index] embed_backend = "onnx-int8"``; onnx
fp32 does not.

Run: ``python benchmarks/embed_backends.py`` (writes benchmarks/results/embed_backends.json).
"""

from __future__ import annotations

import argparse
import io
import os
import time
from pathlib import Path

import numpy as np
from retrieval_recall import recall_at, squad_corpus  # a sibling script (its folder is on sys.path)
from tqdm import tqdm

from asymmetry import defaults
from asymmetry.atomic import atomic_write_json
from asymmetry.datasets import load_qa, load_squad
from asymmetry.embedder import EMBED_BACKENDS, Embedder
from asymmetry.index import build_index
from asymmetry.index.chunking import chunk_articles
from asymmetry.index.config import IndexConfig
from asymmetry.index.corpus import open_corpus
from asymmetry.index.prebuilt import ENV as PREBUILT_ENV
from asymmetry.index.shards import embed_passages
from asymmetry.retrieval import RetrievalConfig, Retriever


def passages(n: int) -> list[str]:
    """``n`` default-corpus passages spread evenly over the corpus (the embedded text: title + passage)."""
    texts = [c.indexed_text for c in chunk_articles(open_corpus("default"))]
    return texts[:: max(1, len(texts) // n)][:n]


def agreement(vectors: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    cos = (vectors * reference).sum(axis=1)  # both normalised
    return {"max_abs_diff": float(np.abs(vectors - reference).max()), "min_cosine": float(cos.min()),
            "mean_cosine": float(cos.mean())}


def throughput(backends: dict, texts: list[str], batch_size: int, rounds: int) -> tuple[dict, dict]:
    """Best-round passages/s of each backend (interleaved, order rotated) and each backend's vectors (N, D)."""
    for be in backends.values():
        embed_passages(texts[:batch_size], be, batch_size)  # warm-up
    secs = {name: [] for name in backends}
    vectors = {}
    names = list(backends)
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            t = time.perf_counter()
            with tqdm(total=len(texts), file=io.StringIO()) as bar:
                vectors[name] = embed_passages(texts, backends[name], batch_size, bar)  # (N, D)
            secs[name].append(time.perf_counter() - t)
        print("  round " + ", ".join(f"{n} {len(texts) / secs[n][-1]:.1f}" for n in names) + " passages/s",
              flush=True)
    return {n: len(texts) / min(s) for n, s in secs.items()}, vectors


def squad_recall(backends: dict, folder: Path) -> dict:
    """Held-out SQuAD recall@1/5/20 per backend (dense and hybrid, no reranker), each on its own flat index."""
    items = load_squad()
    held = {q.id for q in load_qa("squad", "heldout")}
    questions = [it for it in items if it.id in held]
    corpus, paragraphs = squad_corpus(folder, items)
    config = RetrievalConfig(verify_checksums=False, rerank=False)
    results, qvecs, retrievers = {}, {}, {}
    for name, be in backends.items():
        t = time.perf_counter()
        m = build_index(str(corpus), folder / f"index-{name}", index_type="flat", rebuild=True, progress=False,
                        embedder=be)
        retrievers[name] = Retriever.open(folder / f"index-{name}", config=config, embedder=be)
        qvecs[name] = be.encode([it.question for it in questions], batch_size=128)  # (Q, D)
        results[name] = {mode: recall_at(retrievers[name], questions, qvecs[name], paragraphs, mode)
                         for mode in ("dense", "hybrid")}
        print(f"  {name:10} {m.passage_count} passages ({time.perf_counter() - t:.0f}s): " + "  ".join(
            f"{mode} recall@5 {r['recall@5']:.3f}" for mode, r in results[name].items()), flush=True)
    if "onnx-int8" in qvecs:
        # int8 activations are quantized per batch: the engine embeds a question alone, not in a batch of 128
        alone = np.concatenate([backends["onnx-int8"].encode([it.question]) for it in questions])  # (Q, D)
        results["onnx-int8-queries-alone"] = {
            "dense": recall_at(retrievers["onnx-int8"], questions, alone, paragraphs, "dense"),
            "max_abs_diff_vs_batched": float(np.abs(alone - qvecs["onnx-int8"]).max())}
        # a mixed setup, which Retriever.open refuses (for information only)
        results["torch-index+int8-queries"] = {
            "dense": recall_at(retrievers["torch"], questions, qvecs["onnx-int8"], paragraphs, "dense")}
        for name in ("onnx-int8-queries-alone", "torch-index+int8-queries"):
            print(f"  {name}: dense recall@5 {results[name]['dense']['recall@5']:.3f}")
    return {"questions": len(questions), "part": "heldout", "paragraphs": len(paragraphs), "results": results}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--passages", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=IndexConfig().batch_size)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--skip-recall", action="store_true")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "embed_backends.json"))
    args = ap.parse_args()
    os.environ[PREBUILT_ENV] = "none"  # every backend embeds every passage itself
    import torch  # heavy: only to read its thread count

    threads = torch.get_num_threads()  # the ONNX sessions get the same
    backends = {b: Embedder(backend=b) for b in EMBED_BACKENDS}
    for name, be in backends.items():
        if name != "torch":
            t = time.perf_counter()
            path = be.onnx_path()  # exported (once per weights) into $ASYMMETRY_HOME/onnx
            print(f"{name}: {path} ({path.stat().st_size / 1e6:.1f} MB, {time.perf_counter() - t:.1f}s)", flush=True)
    texts = passages(args.passages)
    words = [len(x.split()) for x in texts]
    print(f"{len(texts)} passages ({np.mean(words):.0f} words on average), batch {args.batch_size}, {threads} threads, "
          f"{args.rounds} rounds", flush=True)
    speed, vectors = throughput(backends, texts, args.batch_size, args.rounds)
    report = {"passages": len(texts), "mean_words": float(np.mean(words)), "batch_size": args.batch_size,
              "threads": threads, "rounds": args.rounds, "passages_per_s": speed,
              "ratio_vs_torch": {n: s / speed["torch"] for n, s in speed.items()},
              "agreement_vs_torch": {n: agreement(v, vectors["torch"]) for n, v in vectors.items() if n != "torch"}}
    for n in backends:
        extra = "" if n == "torch" else "  " + ", ".join(f"{k} {v:.4g}" for k, v in report["agreement_vs_torch"][n].items())
        print(f"{n:10} {speed[n]:6.1f} passages/s  x{report['ratio_vs_torch'][n]:.2f} vs torch{extra}", flush=True)
    if not args.skip_recall:
        report["squad"] = squad_recall(backends, defaults.home() / "bench" / "embed-backends")
        base = report["squad"]["results"]["torch"]["dense"]["recall@5"]
        report["adopt"] = {n: report["ratio_vs_torch"][n] >= 2.0
                           and abs(report["squad"]["results"][n]["dense"]["recall@5"] - base) <= 0.01
                           for n in backends if n != "torch"}
        print("meets the bar (>= 2x and dense recall@5 within 1 point): "
              + ", ".join(f"{n} {'yes' if ok else 'no'}" for n, ok in report["adopt"].items()))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out, report, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
