"""[retrieval] section of the config."""

from __future__ import annotations

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
