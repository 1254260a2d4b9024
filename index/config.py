"""[index] section of the config."""

from __future__ import annotations

from dataclasses import dataclass

from asymmetry.errors import ConfigError

INDEX_TYPES = ("auto", "flat", "hnsw", "ivfpq")


@dataclass
class IndexConfig:
    index_dir: str | None = None  # None: <ASYMMETRY_HOME>/indexes/default
    corpus: str = "default"
    index_type: str = "auto"
    embedding_model: str | None = None  # None: the embedded all-MiniLM-L6-v2
    batch_size: int = 64

    def __post_init__(self):
        if self.index_type not in INDEX_TYPES:
            raise ConfigError("index.index_type", self.index_type, f"use one of {', '.join(INDEX_TYPES)}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ConfigError("index.batch_size", self.batch_size, "use a positive integer such as 64")
