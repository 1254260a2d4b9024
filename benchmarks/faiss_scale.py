"""Scale benchmark: flat vs HNSW vs IVF-PQ on >= 1M synthetic clustered 384-d vectors.

The vectors imitate sentence embeddings: a mixture of ``--clusters`` clusters on the unit sphere; a vector is its
cluster's centre plus a Gaussian spread of norm about ``--spread`` inside the cluster's own random ``--rank``-
dimensional subspace (the intrinsic dimension of embedding models is far below 384), plus a little isotropic noise;
all vectors are normalised and searched by inner product. Queries are fresh draws from the same distribution; the
mean similarity of their exact top-1 and top-10 neighbours is printed to characterise the data. Flat (exact)
search is the baseline measured in the same run: recall@10 = |top-10 ∩ exact top-10| / 10, memory per vector =
serialised index bytes / N (what search holds in RAM), and build and query times are printed as ratios to flat's.

IVF-PQ is measured with its PQ scores alone and with exact re-ranking (``--refine`` candidates per result, their
exact vectors read from a memory-mapped .npy on disk, as ``asymmetry.retrieval`` does): re-ranking costs disk
(``disk_bytes_per_vector``), not memory. The pick is the smallest-memory, then fastest, IVF-PQ configuration with
recall@10 >= 0.9 at <= 1/8 of flat's memory; it is the default in ``index/faiss_index.py``.

Run: ``python benchmarks/faiss_scale.py`` (1M vectors; about 30 minutes on 2 cores, most of it the HNSW build);
``--n 100000`` for a quick check.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

from asymmetry.atomic import atomic_write_json
from asymmetry.index.faiss_index import rerank

# Shapes: N base vectors, Q queries, D dimensions, R rank of a cluster's covariance, K neighbours.


def clustered_vectors(n: int, d: int, clusters: int, rank: int, seed: int, centers_seed: int = 0,
                      spread: float = 1.0) -> np.ndarray:
    rng_c = np.random.default_rng(centers_seed)
    centers = rng_c.standard_normal((clusters, d)).astype(np.float32)  # (C, D)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    bases = rng_c.standard_normal((clusters, d, rank)).astype(np.float32) / math.sqrt(d)  # (C, D, R)
    scales = rng_c.uniform(0.5, 1.5, size=(clusters, rank)).astype(np.float32)  # (C, R)
    rng = np.random.default_rng(seed)
    out = np.empty((n, d), dtype=np.float32)  # (N, D)
    step = 50_000
    for start in range(0, n, step):
        m = min(step, n - start)
        labels = rng.integers(0, clusters, size=m)
        z = rng.standard_normal((m, rank)).astype(np.float32) * scales[labels]  # (M, R)
        x = centers[labels] + (spread / math.sqrt(rank)) * np.einsum("mdr,mr->md", bases[labels], z)  # (M, D)
        x += 0.004 * rng.standard_normal((m, d)).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        out[start : start + m] = x
    return out


def recall_at(found: np.ndarray, truth: np.ndarray, k: int = 10) -> float:
    hits = sum(len(set(f[:k]).intersection(t[:k])) for f, t in zip(found, truth))
    return hits / (k * len(truth))


def index_bytes(index) -> int:
    return int(faiss.serialize_index(index).nbytes)


def timed_search(index, queries: np.ndarray, k: int) -> tuple[np.ndarray, float]:
    t = time.perf_counter()
    _, ids = index.search(queries, k)  # (Q, K)
    return ids, time.perf_counter() - t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--clusters", type=int, default=1000)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--spread", type=float, default=1.0, help="norm of a vector's offset from its cluster centre")
    ap.add_argument("--hnsw-m", type=int, default=16)
    ap.add_argument("--hnsw-ef-construction", type=int, default=40)
    ap.add_argument("--pq-m", type=int, nargs="+", default=[48, 96])
    ap.add_argument("--nprobe", type=int, nargs="+", default=[16, 32, 64])
    ap.add_argument("--refine", type=int, nargs="+", default=[0, 8], help="re-ranked candidates per result (0: off)")
    ap.add_argument("--skip-hnsw", action="store_true", help="leave HNSW out (its build is the slow part)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "faiss_scale.json"))
    args = ap.parse_args()
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    k = 10
    t0 = time.perf_counter()
    xb = clustered_vectors(args.n, args.dim, args.clusters, args.rank, seed=1, spread=args.spread)  # (N, D)
    xq = clustered_vectors(args.queries, args.dim, args.clusters, args.rank, seed=2, spread=args.spread)  # (Q, D)
    print(f"data: {args.n:,} x {args.dim} clustered vectors ({args.clusters} clusters, rank {args.rank}, spread "
          f"{args.spread}) in {time.perf_counter() - t0:.1f}s", flush=True)
    rows = []

    # baseline: exact flat search
    t = time.perf_counter()
    flat = faiss.IndexFlatIP(args.dim)
    flat.add(xb)
    flat_build = time.perf_counter() - t
    t = time.perf_counter()
    sims, truth = flat.search(xq, k)  # (Q, K), (Q, K)
    flat_query = time.perf_counter() - t
    neighbours = {"top1_similarity": float(sims[:, 0].mean()), "top10_similarity": float(sims[:, k - 1].mean())}
    print(f"exact neighbours: mean similarity top-1 {neighbours['top1_similarity']:.3f}, top-10 "
          f"{neighbours['top10_similarity']:.3f}", flush=True)
    flat_bytes = index_bytes(flat) if args.n <= 2_000_000 else flat.ntotal * args.dim * 4
    base = {"type": "flat", "params": {}, "bytes_per_vector": flat_bytes / args.n, "build_s": flat_build,
            "query_ms": 1000 * flat_query / args.queries, "recall@10": 1.0}
    rows.append(base)
    print(f"flat: build {flat_build:.1f}s, {base['query_ms']:.2f} ms/query, {base['bytes_per_vector']:.0f} B/vector",
          flush=True)
    del flat

    # HNSW
    if not args.skip_hnsw:
        _hnsw_rows(args, xb, xq, truth, k, base, rows)

    # exact vectors on disk for re-ranking, as an index folder's vectors.npy
    tmpdir = tempfile.TemporaryDirectory(prefix="faiss-scale-")
    vec_path = Path(tmpdir.name) / "vectors.npy"
    np.save(vec_path, xb)
    vectors = np.load(vec_path, mmap_mode="r")  # (N, D)
    disk_vectors = vec_path.stat().st_size / args.n

    # IVF-PQ: one coarse quantizer trained once, shared by the PQ variants
    nlist = max(1, int(2 * math.sqrt(args.n)))
    rng = np.random.default_rng(3)
    train = xb[rng.choice(args.n, size=min(args.n, max(64 * nlist, 256 * 100)), replace=False)]  # (T, D)
    t = time.perf_counter()
    quantizer = faiss.IndexFlatIP(args.dim)
    km = faiss.Clustering(args.dim, nlist)
    km.niter = 10
    km.max_points_per_centroid = 64
    km.train(train, quantizer)
    coarse_s = time.perf_counter() - t
    print(f"ivf: {nlist} lists trained in {coarse_s:.1f}s", flush=True)
    for m in args.pq_m:
        t = time.perf_counter()
        index = faiss.IndexIVFPQ(quantizer, args.dim, nlist, m, 8, faiss.METRIC_INNER_PRODUCT)
        index.train(train)  # quantizer already trained: only the product quantizer is learned
        index.add(xb)
        build = coarse_s + time.perf_counter() - t
        nbytes = index_bytes(index)
        for nprobe, refine in itertools.product(args.nprobe, args.refine):
            index.nprobe = nprobe
            t = time.perf_counter()
            if refine:
                _, cand = index.search(xq, k * refine)  # (Q, C)
                ids = np.stack([rerank(vectors, q, c, k)[1] for q, c in zip(xq, cand)])  # (Q, K)
            else:
                _, ids = index.search(xq, k)  # (Q, K)
            secs = time.perf_counter() - t
            rows.append({"type": "ivfpq", "params": {"nlist": nlist, "m": m, "nbits": 8, "nprobe": nprobe,
                                                     "refine": refine},
                         "bytes_per_vector": nbytes / args.n,
                         "disk_bytes_per_vector": nbytes / args.n + (disk_vectors if refine else 0.0),
                         "build_s": build, "query_ms": 1000 * secs / args.queries,
                         "recall@10": recall_at(ids, truth, k)})
            print(_fmt(rows[-1], base), flush=True)
        index.own_fields = False  # the shared quantizer outlives this index
        del index

    budget = base["bytes_per_vector"] / 8
    ok = [r for r in rows if r["type"] == "ivfpq" and r["recall@10"] >= 0.9 and r["bytes_per_vector"] <= budget]
    pick = min(ok, key=lambda r: (r["bytes_per_vector"], r["query_ms"])) if ok else None
    print()
    print(f"{'type':6} {'params':70} {'B/vec':>7} {'mem/flat':>8} {'build/flat':>10} {'query/flat':>10} {'R@10':>6}")
    for r in rows:
        print(f"{r['type']:6} {json.dumps(r['params']):70} {r['bytes_per_vector']:7.1f} "
              f"{r['bytes_per_vector'] / base['bytes_per_vector']:8.3f} {r['build_s'] / max(flat_build, 1e-9):10.1f} "
              f"{r['query_ms'] / base['query_ms']:10.3f} {r['recall@10']:6.3f}")
    if pick:
        print(f"\nIVF-PQ pick (recall@10 >= 0.9 at <= 1/8 of flat's memory): {json.dumps(pick['params'])} -> "
              f"recall@10 {pick['recall@10']:.3f}, {pick['bytes_per_vector']:.0f} B/vector "
              f"({pick['bytes_per_vector'] / base['bytes_per_vector']:.3f} of flat), "
              f"{pick['query_ms']:.2f} ms/query ({pick['query_ms'] / base['query_ms']:.2f}x flat)")
    else:
        print("\nno IVF-PQ configuration reached recall@10 >= 0.9 within 1/8 of flat's memory")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    del vectors
    tmpdir.cleanup()
    result = {"n": args.n, "dim": args.dim, "queries": args.queries, "clusters": args.clusters, "rank": args.rank,
              "spread": args.spread, "neighbours": neighbours,
              "baseline": "flat (IndexFlatIP), same run", "rows": rows, "pick": pick,
              "total_s": time.perf_counter() - t0}
    atomic_write_json(out, result, indent=2)
    print(f"wrote {out} (total {result['total_s']:.0f}s)")
    return 0 if pick else 1


def _hnsw_rows(args, xb, xq, truth, k, base, rows) -> None:
    t = time.perf_counter()
    hnsw = faiss.IndexHNSWFlat(args.dim, args.hnsw_m, faiss.METRIC_INNER_PRODUCT)
    hnsw.hnsw.efConstruction = args.hnsw_ef_construction
    hnsw.add(xb)
    hnsw_build = time.perf_counter() - t
    hnsw_bytes = index_bytes(hnsw)
    print(f"hnsw: built in {hnsw_build:.1f}s", flush=True)
    for ef in (32, 64, 128):
        hnsw.hnsw.efSearch = ef
        ids, secs = timed_search(hnsw, xq, k)
        rows.append({"type": "hnsw", "params": {"m": args.hnsw_m, "ef_construction": args.hnsw_ef_construction,
                                                "ef_search": ef},
                     "bytes_per_vector": hnsw_bytes / args.n, "build_s": hnsw_build,
                     "query_ms": 1000 * secs / args.queries, "recall@10": recall_at(ids, truth, k)})
        print(_fmt(rows[-1], base), flush=True)
    del hnsw


def _fmt(r: dict, base: dict) -> str:
    return (f"{r['type']}: {json.dumps(r['params'])} recall@10 {r['recall@10']:.3f}, {r['query_ms']:.2f} ms/query "
            f"({r['query_ms'] / base['query_ms']:.2f}x flat), {r['bytes_per_vector']:.0f} B/vector "
            f"({r['bytes_per_vector'] / base['bytes_per_vector']:.3f} of flat)")


if __name__ == "__main__":
    raise SystemExit(main())
