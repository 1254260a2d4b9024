"""Online retrieval over a built index folder: dense FAISS search, BM25 (bm25s) and reciprocal-rank fusion.

``Retriever.open(index_dir, config=..., embedder=...)`` verifies the manifest (files, sizes, checksums, embedding
model) once; it opens an index and never builds one (``asymmetry.index.ensure_index`` does, ``asymmetry index build``
from the shell). ``search(query, k, mode, query_embedding=None)`` returns :class:`Passage` objects, near-duplicates
removed. The router and the retriever share one query embedding: pass it as ``query_embedding`` (shape (D,) or
(1, D)); without it the retriever embeds the query with its :class:`~asymmetry.embedder.Embedder`.

With ``retrieval.rerank`` the top ``retrieval.rerank_depth`` fused, de-duplicated candidates are rescored by a
cross-encoder (:mod:`asymmetry.retrieval.rerank`, loaded once per retriever on first use) and
``retrieval.rerank_min_score`` drops the passages it judges not to answer.

Shapes: Q queries (always 1 here), D embedding dimensions, C candidates.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from asymmetry.embedder import Embedder, embedding_model_name
from asymmetry.errors import AsymmetryError
from asymmetry.index import manifest as mf
from asymmetry.index.dedup import NUM_HASHES, is_near_duplicate, minhash
from asymmetry.index.faiss_index import apply_search_params, rerank
from asymmetry.index.lexical import bm25_tokenize
from asymmetry.index.store import PassageStore
from asymmetry.retrieval.config import MODES, RetrievalConfig
from asymmetry.retrieval.rerank import CrossEncoderReranker, passage_text


@dataclass
class Passage:
    """One retrieved passage. ``score``: the cross-encoder's logit when the search reranked (the fusion's score is
    then in ``metadata["fused_score"]``, its 1-based rank before reranking in ``metadata["fused_rank"]``), else the
    cosine similarity (dense), the BM25 score (lexical) or the RRF score (hybrid)."""

    id: int
    title: str
    text: str
    url: str
    score: float
    metadata: dict = field(default_factory=dict)


def remove_near_duplicates(passages: list[Passage], threshold: float = 0.8, limit: int | None = None,
                           signatures: list[np.ndarray | None] | None = None) -> list[Passage]:
    """Drop passages whose word-3-gram Jaccard similarity (MinHash estimate) with a higher-ranked one is
    >= ``threshold``; stop once ``limit`` passages are kept. ``signatures`` (from the passage store) are computed
    from the texts where missing."""
    if threshold >= 1.0:
        return passages[:limit]
    kept: list[Passage] = []
    seen = np.empty((len(passages), NUM_HASHES), dtype=np.uint32)  # (K, H) signatures of the kept passages
    for i, p in enumerate(passages):
        if limit is not None and len(kept) >= limit:
            break
        sig = signatures[i] if signatures is not None and signatures[i] is not None else minhash(p.text)
        if is_near_duplicate(sig, seen[: len(kept)], threshold):
            continue
        seen[len(kept)] = sig
        kept.append(p)
    return kept


def reciprocal_rank_fusion(rankings: list[list[int]], k: int = 60) -> list[tuple[int, float]]:
    """RRF (Cormack et al., 2009): score(d) = sum over rankings of 1 / (k + rank), rank starting at 1."""
    scores: dict[int, float] = {}
    for ranking in rankings:
        for rank, pid in enumerate(ranking, 1):
            scores[pid] = scores.get(pid, 0.0) + 1.0 / (k + rank)
    return sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))


def _as_retrieval_config(config) -> tuple[RetrievalConfig, object | None]:
    if config is None:
        return RetrievalConfig(), None
    if isinstance(config, RetrievalConfig):
        return config, None
    if hasattr(config, "retrieval") and hasattr(config, "index"):  # the whole asymmetry Config
        return config.retrieval, config.index
    raise TypeError(f"config must be a Config or RetrievalConfig, not {type(config).__name__}")


class Retriever:
    """Dense + lexical + hybrid search over one index folder (see :mod:`asymmetry.index.build`)."""

    def __init__(self, index_dir: Path, manifest: mf.Manifest, index, store: PassageStore, bm25,
                 config: RetrievalConfig, vectors: np.ndarray | None = None, refine: int = 0,
                 embedder: Embedder | None = None, reranker: CrossEncoderReranker | None = None):
        self.index_dir = index_dir
        self.manifest = manifest
        self.index = index
        self.store = store
        self.bm25 = bm25
        self.config = config
        self.vectors = vectors  # (N, D) memory map for IVF-PQ re-ranking, or None
        self.refine = refine if vectors is not None else 0
        self._embedder = embedder  # None: made from the manifest's model when a query is first embedded
        self._lock = threading.Lock()
        self._reranker = reranker  # None: made from retrieval.rerank_model when a search first reranks
        self._reranker_lock = threading.Lock()

    # ------------------------------------------------------------------------------------------------- opening
    @classmethod
    def open(cls, index_dir: str | os.PathLike | None = None, *, config=None,
             embedder: Embedder | None = None, reranker: CrossEncoderReranker | None = None) -> Retriever:
        """Open a built index: ``index_dir``, else the config's ``index.index_dir``, else the default index.

        ``config`` is the assistant's ``Config`` (its ``index.embedding_model`` must match the index) or a
        ``RetrievalConfig``. ``embedder`` embeds queries given as text (it must be the index's model); by default
        the retriever makes its own when it first needs one. ``reranker`` likewise (by default one of
        ``retrieval.rerank_model``, its folder checked here when ``retrieval.rerank`` is on). A folder without a
        complete index is an error: build it with ``asymmetry index build`` or ``asymmetry.index.ensure_index`` first.
        """
        import faiss  # heavy: only when an index is opened

        rcfg, icfg = _as_retrieval_config(config)
        if index_dir is None and icfg is not None and icfg.index_dir:
            index_dir = icfg.index_dir
        root = mf.resolve_index_dir(index_dir)
        if mf.read_manifest(root) is None:
            raise AsymmetryError(
                f"{root} holds no complete index (no {mf.MANIFEST_NAME}): build it with asymmetry index build "
                f"--index-dir {root} (from Python: asymmetry.index.ensure_index(config) builds the configured index)"
            )
        manifest = mf.load_manifest(root, verify=rcfg.verify_checksums)
        backend = mf.embed_backend(manifest)
        if icfg is not None:
            _check_model(root, manifest, embedding_model_name(icfg.embedding_model), "the config asks for",
                         "or set index.embedding_model to the index's model")
            _check_backend(root, manifest, icfg.embed_backend, "the config's index.embed_backend is",
                           f'or set index.embed_backend = "{backend}"')
        if embedder is not None:
            _check_model(root, manifest, embedder.name, "the embedder passed to Retriever.open is",
                         f"or pass an Embedder of {manifest.embedding_model!r}")
            _check_backend(root, manifest, embedder.backend, "the embedder passed to Retriever.open runs",
                           f"or pass an Embedder(backend={backend!r})")
        try:
            index = faiss.read_index(str(root / mf.FAISS_NAME))
        except RuntimeError as exc:
            raise AsymmetryError(
                f"index file {root / mf.FAISS_NAME} is damaged ({str(exc).splitlines()[0][:200]}): rebuild with "
                f"{mf.rebuild_command(root, manifest)}"
            ) from exc
        if index.d != manifest.embedding_dim or index.ntotal != manifest.passage_count:
            raise AsymmetryError(
                f"index file {root / mf.FAISS_NAME} holds {index.ntotal} vectors of dimension {index.d}, the manifest "
                f"says {manifest.passage_count} of {manifest.embedding_dim}: rebuild with "
                f"{mf.rebuild_command(root, manifest)}"
            )
        params = dict(manifest.index_params)
        if rcfg.ef_search is not None:
            params["ef_search"] = rcfg.ef_search
        if rcfg.nprobe is not None:
            params["nprobe"] = rcfg.nprobe
        if rcfg.refine is not None:
            params["refine"] = rcfg.refine
        apply_search_params(index, manifest.index_type, params)
        refine = int(params.get("refine") or 0) if manifest.index_type == "ivfpq" else 0
        vectors = _open_vectors(root, manifest) if refine else None  # (N, D)
        store = PassageStore(root / mf.STORE_NAME)
        bm25 = _open_bm25(root) if (root / mf.BM25_DIR).is_dir() else None
        if reranker is None and rcfg.rerank:
            reranker = CrossEncoderReranker(rcfg.rerank_model)  # checks the folder now; the session loads lazily
        return cls(root, manifest, index, store, bm25, rcfg, vectors, refine, embedder, reranker)

    # ----------------------------------------------------------------------------------------------- searching
    @property
    def embedder(self) -> Embedder:
        """The query embedder: the one passed to :meth:`open`, else one of the index's embedding model."""
        with self._lock:
            if self._embedder is None:
                self._embedder = Embedder(self.manifest.embedding_model, backend=mf.embed_backend(self.manifest))
            return self._embedder

    @property
    def reranker(self) -> CrossEncoderReranker:
        """The cross-encoder: the one passed to :meth:`open`, else one of ``retrieval.rerank_model``."""
        with self._reranker_lock:
            if self._reranker is None:
                self._reranker = CrossEncoderReranker(self.config.rerank_model)
            return self._reranker

    def embed_query(self, query: str) -> np.ndarray:
        """The normalised query embedding (D,) with the index's embedding model."""
        return self.embedder.encode([query])[0]  # (D,)

    def search(self, query: str, k: int | None = None, mode: str | None = None,
               query_embedding: np.ndarray | None = None, rerank: bool | None = None) -> list[Passage]:
        """The top ``k`` passages for ``query``: ``mode`` is "hybrid" (default), "dense" or "lexical".

        ``rerank`` (default ``retrieval.rerank``): rescore the top ``retrieval.rerank_depth`` candidates (after fusion
        and near-duplicate removal) with the cross-encoder, sort by its logit (then ``Passage.score``; the fusion's
        score moves to ``metadata["fused_score"]``), keep ``k`` and drop those below ``retrieval.rerank_min_score``
        (so fewer than ``k``, even none, may come back). ``rerank_min_score`` is ignored without reranking.
        """
        k = self.config.k if k is None else k
        mode = mode or self.config.mode
        if not isinstance(k, int) or k < 1:
            raise AsymmetryError(f"invalid k={k!r}: pass a positive integer number of passages")
        if mode not in MODES:
            raise AsymmetryError(f"invalid mode={mode!r}: use one of {', '.join(MODES)}")
        if not isinstance(query, str) or not query.strip():
            raise AsymmetryError("the query is empty: pass a question or keywords")
        use_rerank = self.config.rerank if rerank is None else bool(rerank)
        want = max(k, self.config.rerank_depth) if use_rerank else k  # candidates kept after near-duplicate removal
        depth = max(want * self.config.oversample, self.config.fusion_depth if mode == "hybrid" else 0)
        depth = min(depth, self.manifest.passage_count)
        dense: list[tuple[int, float]] = []
        lexical: list[tuple[int, float]] = []
        if mode in ("dense", "hybrid"):
            if query_embedding is None:
                query_embedding = self.embed_query(query)
            dense = self.dense_ids(query_embedding, depth)
        if mode in ("lexical", "hybrid"):
            lexical = self.lexical_ids(query, depth)
        if mode == "dense":
            ranked = dense
        elif mode == "lexical":
            ranked = lexical
        else:
            ranked = reciprocal_rank_fusion([[i for i, _ in dense], [i for i, _ in lexical]], self.config.rrf_k)
        ranked = ranked[: max(depth, want)]
        dense_rank = {pid: r for r, (pid, _) in enumerate(dense, 1)} if mode == "hybrid" else {}
        lexical_rank = {pid: r for r, (pid, _) in enumerate(lexical, 1)} if mode == "hybrid" else {}
        kept: list[Passage] = []
        dedup = self.config.dedup_threshold < 1.0
        seen = np.empty((want, NUM_HASHES), dtype=np.uint32)  # (K, H) signatures of the kept passages
        pos = 0
        while len(kept) < want and pos < len(ranked):  # fetch only as many rows as near-duplicate removal needs
            batch = ranked[pos : pos + want - len(kept)]
            pos += len(batch)
            for (pid, score), sp in zip(batch, self.store.get([pid for pid, _ in batch])):
                if dedup:
                    sig = sp.signature if sp.signature is not None else minhash(sp.text)
                    if is_near_duplicate(sig, seen[: len(kept)], self.config.dedup_threshold):
                        continue
                    seen[len(kept)] = sig
                meta = sp.metadata
                if mode == "hybrid":
                    meta = {**meta, "dense_rank": dense_rank.get(pid), "lexical_rank": lexical_rank.get(pid)}
                kept.append(Passage(pid, sp.title, sp.text, sp.url, float(score), meta))
        return self.rerank_passages(query, kept, k) if use_rerank else kept

    def rerank_passages(self, query: str, passages: list[Passage], k: int | None = None) -> list[Passage]:
        """``passages`` rescored by the cross-encoder and sorted by its logit (ties keep their order): at most ``k``,
        those below ``retrieval.rerank_min_score`` dropped. Returns new :class:`Passage` objects whose ``score`` is
        the logit; the old score and 1-based rank go to ``metadata["fused_score"]`` and ``metadata["fused_rank"]``."""
        min_score = self.config.rerank_min_score
        scores = self.reranker.score(query, [passage_text(p.title, p.text) for p in passages])  # (C,)
        out: list[Passage] = []
        for i in sorted(range(len(passages)), key=lambda i: (-scores[i], i)):
            if (k is not None and len(out) >= k) or (min_score is not None and scores[i] < min_score):
                break
            p = passages[i]
            meta = {**p.metadata, "fused_score": p.score, "fused_rank": i + 1}
            out.append(Passage(p.id, p.title, p.text, p.url, float(scores[i]), meta))
        return out

    def dense_ids(self, query_embedding: np.ndarray, depth: int) -> list[tuple[int, float]]:
        q = np.asarray(query_embedding, dtype=np.float32).reshape(1, -1)  # (Q, D)
        if q.shape[1] != self.manifest.embedding_dim:
            raise AsymmetryError(
                f"query_embedding has dimension {q.shape[1]} but index {self.index_dir} uses "
                f"{self.manifest.embedding_dim} ({self.manifest.embedding_model}): embed the query with that model"
            )
        if self.refine:
            _, cand = self.index.search(q, min(depth * self.refine, self.manifest.passage_count))  # (Q, C)
            scores, ids = rerank(self.vectors, q[0], cand[0], depth)  # (K,), (K,)
            return list(zip(ids.tolist(), scores.tolist()))
        scores, ids = self.index.search(q, depth)  # (Q, C), (Q, C)
        return [(i, s) for i, s in zip(ids[0].tolist(), scores[0].tolist()) if i >= 0]

    def lexical_ids(self, query: str, depth: int) -> list[tuple[int, float]]:
        if self.bm25 is None:
            raise AsymmetryError(f"index {self.index_dir} has no lexical index: rebuild it or use mode='dense'")
        tokens = [t for t in bm25_tokenize([query], return_ids=False)[0] if t in self.bm25.vocab_dict]
        if not tokens:
            return []
        with self._lock:  # bm25s keeps per-call state
            ids, scores = self.bm25.retrieve([tokens], k=depth, show_progress=False, n_threads=1)  # (Q, C)
        return [(int(i), float(s)) for i, s in zip(ids[0], scores[0]) if s > 0]

    def close(self) -> None:
        self.store.close()


def _check_model(root: Path, manifest: mf.Manifest, wanted: str, who: str, fix: str) -> None:
    if wanted != manifest.embedding_model:
        raise AsymmetryError(
            f"index {root} was built with the embedding model {manifest.embedding_model!r} but {who} {wanted!r}: "
            f"rebuild it with {mf.rebuild_command(root, manifest)}, {fix}"
        )


def _check_backend(root: Path, manifest: mf.Manifest, wanted: str, who: str, fix: str) -> None:
    """Queries are embedded with the backend that embedded the passages: int8 ONNX vectors differ from torch's by
    ~0.5% cosine (benchmarks/embed_backends.py), so a mixed index would rank by a slightly different geometry."""
    built = mf.embed_backend(manifest)
    if wanted != built:
        rebuild = mf.rebuild_command(root, manifest).replace(f" --embed-backend {built}", "")
        rebuild = rebuild.replace(" --rebuild", f" --embed-backend {wanted} --rebuild")
        raise AsymmetryError(
            f"index {root} was embedded with the {built!r} backend but {who} {wanted!r}: its queries must be "
            f"embedded the same way; rebuild it with {rebuild}, {fix}"
        )


def _open_vectors(root: Path, manifest: mf.Manifest) -> np.ndarray:
    """IVF-PQ's exact vectors (N, D) for re-ranking, as a read-only memory map."""
    path = root / mf.VECTORS_NAME
    if not path.is_file():
        raise AsymmetryError(
            f"index {root} re-ranks IVF-PQ candidates but {path.name} is missing: rebuild with asymmetry "
            f"index build --index-dir {root} --rebuild, or set retrieval.refine = 0"
        )
    vectors = np.load(path, mmap_mode="r")  # (N, D)
    if vectors.shape != (manifest.passage_count, manifest.embedding_dim):
        raise AsymmetryError(
            f"{path} holds {vectors.shape} vectors, the manifest says ({manifest.passage_count}, "
            f"{manifest.embedding_dim}): rebuild with asymmetry index build --index-dir {root} --rebuild"
        )
    return vectors


def _open_bm25(root: Path):
    import bm25s  # heavy: only when an index with a lexical part is opened

    try:
        return bm25s.BM25.load(str(root / mf.BM25_DIR), mmap=True)
    except (OSError, ValueError) as exc:
        raise AsymmetryError(
            f"lexical index {root / mf.BM25_DIR} is damaged ({exc}): rebuild with asymmetry index build "
            f"--index-dir {root} --rebuild"
        ) from exc
