"""FAISS index types (flat, HNSW, IVF-PQ), chosen automatically by corpus size or by name.

All indexes use inner product on normalised vectors (cosine similarity). Each type is a registered
:class:`IndexType` that creates an empty index for ``n`` vectors of dimension ``d`` (training IVF-PQ on a sample)
and applies search-time parameters. ``benchmarks/faiss_scale.py`` chose the IVF-PQ defaults: on 1M clustered
384-d vectors, IVF-PQ codes alone reached recall@10 0.66 (PQ48) and 0.84 (PQ96), short of 0.9 (product quantisation
blurs close neighbours). So an IVF-PQ index *re-ranks*: it takes ``refine`` times as many candidates from the PQ
codes and orders them by the exact inner product, read from ``vectors.npy`` memory-mapped from disk. Memory holds
only the codes and ids (59 bytes per vector with PQ48, 1/26 of flat's 1,536); the exact vectors stay on disk and
only the candidates' rows are read. Measured: PQ48, refine 4 -> recall@10 0.979 at nprobe 8 and 16. The default
nprobe is 16, not 8: the synthetic clusters line up with the IVF lists better than real embeddings do.
See :func:`rerank` and the README for the table.

Shapes: N vectors, D dimensions.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from asymmetry.errors import AsymmetryError

AUTO_FLAT_MAX = 50_000  # below this, exact search is fast enough (~5 ms per query on 2 cores)
AUTO_HNSW_MAX = 1_000_000  # below this, HNSW fits in memory comfortably; above, IVF-PQ compresses

HNSW_M = 32
HNSW_EF_CONSTRUCTION = 80
HNSW_EF_SEARCH = 64
PQ_M = 48  # 384-d / 48 = 8 dimensions per sub-quantizer: 48 bytes of codes per vector (flat: 1,536)
PQ_NBITS = 8
IVF_NPROBE = 16
IVF_REFINE = 4  # candidates re-ranked exactly per wanted result (0: PQ scores only)


@dataclass(frozen=True)
class IndexType:
    name: str
    create: Callable[[int, int, dict], object]  # (d, n, params) -> empty (trained if needed) faiss index
    default_params: Callable[[int, int], dict]  # (d, n) -> params recorded in the manifest
    needs_training: bool = False


INDEX_TYPES: dict[str, IndexType] = {}


def register_index_type(index_type: IndexType) -> IndexType:
    if index_type.name in INDEX_TYPES or index_type.name == "auto":
        raise ValueError(f"index type {index_type.name!r} is already registered")
    INDEX_TYPES[index_type.name] = index_type
    return index_type


def _flat(d: int, n: int, params: dict):
    import faiss

    return faiss.IndexFlatIP(d)


def _hnsw(d: int, n: int, params: dict):
    import faiss

    index = faiss.IndexHNSWFlat(d, params["m"], faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = params["ef_construction"]
    index.hnsw.efSearch = params["ef_search"]
    return index


def _ivfpq(d: int, n: int, params: dict):
    import faiss

    if d % params["m"]:
        raise AsymmetryError(f"IVF-PQ needs the dimension {d} to be a multiple of pq_m={params['m']}: pick a divisor")
    quantizer = faiss.IndexFlatIP(d)
    index = faiss.IndexIVFPQ(quantizer, d, params["nlist"], params["m"], params["nbits"], faiss.METRIC_INNER_PRODUCT)
    index.nprobe = params["nprobe"]
    return index


def ivf_nlist(n: int) -> int:
    """About 2*sqrt(n) lists (as in benchmarks/faiss_scale.py), with at least 39 training points per list."""
    return max(1, min(int(2 * math.sqrt(n)), n // 39))


def _ivfpq_params(d: int, n: int) -> dict:
    m = PQ_M if d % PQ_M == 0 else max(x for x in range(1, d + 1) if d % x == 0 and x <= d // 4)
    nbits = PQ_NBITS if n >= 256 * 39 else max(1, min(PQ_NBITS, int(math.log2(max(2, n // 39)))))
    nlist = ivf_nlist(n)
    return {"nlist": nlist, "m": m, "nbits": nbits, "nprobe": min(IVF_NPROBE, nlist), "refine": IVF_REFINE}


register_index_type(IndexType("flat", _flat, lambda d, n: {}))
register_index_type(IndexType("hnsw", _hnsw, lambda d, n: {"m": HNSW_M, "ef_construction": HNSW_EF_CONSTRUCTION,
                                                             "ef_search": HNSW_EF_SEARCH}))
register_index_type(IndexType("ivfpq", _ivfpq, _ivfpq_params, needs_training=True))


def choose_index_type(n: int, requested: str = "auto") -> str:
    if requested != "auto":
        if requested not in INDEX_TYPES:
            raise AsymmetryError(f"unknown index type {requested!r}: use auto or one of {', '.join(INDEX_TYPES)}")
        return requested
    if n < AUTO_FLAT_MAX:
        return "flat"
    if n < AUTO_HNSW_MAX:
        return "hnsw"
    return "ivfpq"


def create_index(name: str, d: int, n: int, params: dict | None = None, train: np.ndarray | None = None):
    """An empty index of type ``name``; ``train`` (T, D) trains IVF-PQ. Returns (index, params)."""
    kind = INDEX_TYPES[name]
    full = {**kind.default_params(d, n), **(params or {})}
    index = kind.create(d, n, full)
    if kind.needs_training:
        if train is None or len(train) == 0:
            raise AsymmetryError(f"a {name} index needs training vectors")
        index.train(np.ascontiguousarray(train, dtype=np.float32))  # (T, D)
    return index, full


def rerank(vectors: np.ndarray, query: np.ndarray, ids: np.ndarray, depth: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact re-ranking: the ``depth`` best of candidate ``ids`` (C,) by inner product with ``query`` (D,), reading
    their rows of ``vectors`` (N, D), usually a read-only memory map. Returns (scores (K,), ids (K,)), best first."""
    ids = ids[ids >= 0]
    if len(ids) == 0:
        return np.empty(0, dtype=np.float32), np.empty(0, dtype=np.int64)
    order = np.argsort(ids, kind="stable")  # ascending rows: sequential reads of the memory map
    rows = ids[order]
    scores = np.asarray(vectors[rows], dtype=np.float32) @ query  # (C,)
    best = np.argsort(-scores, kind="stable")[:depth]
    return scores[best], rows[best]


def apply_search_params(index, name: str, params: dict) -> None:
    """Set search-time knobs (HNSW efSearch, IVF nprobe) from manifest or config values."""
    import faiss

    if name == "hnsw" and "ef_search" in params:
        faiss.downcast_index(index).hnsw.efSearch = int(params["ef_search"])
    if name == "ivfpq" and "nprobe" in params:
        faiss.extract_index_ivf(index).nprobe = int(params["nprobe"])
