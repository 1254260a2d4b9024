"""[index] section of the config."""

from __future__ import annotations

import os
from dataclasses import dataclass

from asymmetry.embedder import EMBED_BACKENDS
from asymmetry.errors import ConfigError
from asymmetry.index.chunking import ChunkingConfig
from asymmetry.integrity import positive_int

INDEX_TYPES = ("auto", "flat", "hnsw", "ivfpq")


@dataclass
class IndexConfig:
    index_dir: str | None = None  # None: <ASYMMETRY_HOME>/indexes/default
    corpus: str = "default"  # "default" or a .xml/.xml.bz2/.jsonl/.parquet path
    index_type: str = "auto"  # auto: flat < 50k passages <= hnsw < 1M <= ivfpq
    embedding_model: str | None = None  # None: the embedded all-MiniLM-L6-v2
    # what embeds passages (and the index's queries): torch, onnx or onnx-int8 (2.5x the passages/s of torch on 2
    # CPU cores, SQuAD recall@5 within a point; benchmarks/embed_backends.py). An index records it; queries must match
    embed_backend: str = "torch"
    batch_size: int = 64
    shard_size: int = 4096  # passages per resumable shard
    chunk_target_words: int = 150
    chunk_max_words: int = 200
    chunk_min_words: int = 100
    chunk_overlap_words: int = 30

    def __post_init__(self):
        if self.index_type not in INDEX_TYPES:
            raise ConfigError("index.index_type", self.index_type, f"use one of {', '.join(INDEX_TYPES)}")
        if self.embed_backend not in EMBED_BACKENDS:
            raise ConfigError("index.embed_backend", self.embed_backend, f"use one of {', '.join(EMBED_BACKENDS)}")
        positive_int("index.batch_size", self.batch_size, "use a positive integer such as 64")
        positive_int("index.shard_size", self.shard_size, "use a positive integer such as 4096")
        if not isinstance(self.corpus, (str, os.PathLike)) or not str(self.corpus):
            raise ConfigError("index.corpus", self.corpus, 'use "default" or a .xml/.xml.bz2/.jsonl/.parquet path')
        self.chunking()  # validates the chunk sizes

    def chunking(self) -> ChunkingConfig:
        return ChunkingConfig(self.chunk_target_words, self.chunk_max_words, self.chunk_min_words,
                              self.chunk_overlap_words)
