"""Retrieval speed against bare baselines measured in the same run.

1. Embedding throughput of the index build (``asymmetry.index.build.embed_passages``: length-sorted blocks with a
   progress bar, through the shared ``Embedder``) vs a bare ``SentenceTransformer.encode`` over the same passages,
   same batch size. Goal >= 0.9x.
2. Dense ``Retriever.search(query, k, mode="dense", query_embedding=...)`` (FAISS search, passage store lookup,
   near-duplicate removal, ``Passage`` objects) vs a bare ``faiss_index.search`` of the same embedding on the same
   index. Goal <= 1.2x. The query embedding is computed once and excluded from both (it is shared with the router).

Methods alternate over ``--rounds`` rounds and the best round of each is compared, so the ratio is robust to load
from other processes. Run: ``python benchmarks/retrieval_speed.py`` (writes benchmarks/results/retrieval_speed.json).
"""

from __future__ import annotations

import argparse
import io
import itertools
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from asymmetry import defaults
from asymmetry.atomic import atomic_write_json
from asymmetry.datasets import load_squad
from asymmetry.embedder import Embedder
from asymmetry.index.chunking import chunk_articles
from asymmetry.index.corpus import open_corpus
from asymmetry.index.manifest import default_index_dir, read_manifest
from asymmetry.index.shards import embed_passages
from asymmetry.retrieval import RetrievalConfig, Retriever


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--passages", type=int, default=1024)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--index-dir", default=None, help="default: the default index if built, else the SQuAD bench index")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "retrieval_speed.json"))
    args = ap.parse_args()

    # 1. embedding throughput
    texts = [c.indexed_text for c in itertools.islice(chunk_articles(open_corpus("default")), args.passages)]
    embedder = Embedder()
    model = embedder.model  # the bare SentenceTransformer: the baseline
    model.encode(texts[:64], batch_size=args.batch_size)  # warm-up
    bare, ours = [], []
    for _ in range(args.rounds):
        t = time.perf_counter()
        a = model.encode(texts, batch_size=args.batch_size, normalize_embeddings=True, convert_to_numpy=True)
        bare.append(time.perf_counter() - t)
        t = time.perf_counter()
        with tqdm(total=len(texts), unit=" passages", file=io.StringIO()) as bar:
            b = embed_passages(texts, embedder, args.batch_size, bar)  # (N, D)
        ours.append(time.perf_counter() - t)
        print(f"  round: bare encode {len(texts) / bare[-1]:.1f} passages/s, build {len(texts) / ours[-1]:.1f}",
              flush=True)
    np.testing.assert_allclose(a, b, atol=1e-4)
    emb = {"passages": len(texts), "bare_passages_per_s": len(texts) / min(bare),
           "build_passages_per_s": len(texts) / min(ours), "throughput_ratio": min(bare) / min(ours)}
    print(f"embedding: build {emb['build_passages_per_s']:.1f} passages/s vs bare SentenceTransformer.encode "
          f"{emb['bare_passages_per_s']:.1f} passages/s -> {emb['throughput_ratio']:.3f}x (goal >= 0.9)", flush=True)

    # 2. dense search vs bare faiss
    root = args.index_dir
    if root is None:
        root = default_index_dir() if read_manifest(default_index_dir()) else defaults.home() / "bench" / "squad-index"
    retriever = Retriever.open(root, config=RetrievalConfig(verify_checksums=False), embedder=embedder)
    questions = [it.question for it in load_squad()[: args.queries]]
    qvecs = embedder.encode(questions, batch_size=128)  # (Q, D)
    for q, v in zip(questions[:20], qvecs):  # warm-up
        retriever.search(q, k=args.k, mode="dense", query_embedding=v)
    bare_s, ours_s = [], []
    for _ in range(args.rounds):
        t = time.perf_counter()
        for v in qvecs:
            retriever.index.search(v.reshape(1, -1), args.k)
        bare_s.append(time.perf_counter() - t)
        t = time.perf_counter()
        for q, v in zip(questions, qvecs):
            retriever.search(q, k=args.k, mode="dense", query_embedding=v)
        ours_s.append(time.perf_counter() - t)
    search = {"index_dir": str(root), "index_type": retriever.manifest.index_type,
              "passages": retriever.manifest.passage_count, "queries": len(questions), "k": args.k,
              "bare_ms": 1000 * min(bare_s) / len(qvecs), "search_ms": 1000 * min(ours_s) / len(qvecs)}
    search["time_ratio"] = search["search_ms"] / search["bare_ms"]
    print(f"dense search ({search['index_type']}, {search['passages']} passages, k={args.k}): "
          f"{search['search_ms']:.3f} ms/query vs bare faiss {search['bare_ms']:.3f} ms/query -> "
          f"{search['time_ratio']:.3f}x (goal <= 1.2)")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out, {"embedding": emb, "dense_search": search}, indent=2)
    return 0 if emb["throughput_ratio"] >= 0.9 and search["time_ratio"] <= 1.2 else 1


if __name__ == "__main__":
    raise SystemExit(main())
