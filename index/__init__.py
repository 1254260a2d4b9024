"""Offline index builds: corpus readers, chunking, batched embedding, FAISS index types, the passage store, the BM25
tokenizer, near-duplicate signatures and the manifest of a complete index.

    from asymmetry.index import build_index, ensure_index
    root = ensure_index(config)              # the configured index folder, built on first use
    manifest = build_index("dump.xml.bz2", "indexes/wiki", index_type="hnsw", embedder=embedder)

Importing this package loads neither faiss nor bm25s (they load when an index is assembled or searched).
Online code (``asymmetry.retrieval``) reads what this package wrote through :mod:`~asymmetry.index.manifest`,
:mod:`~asymmetry.index.store`, :mod:`~asymmetry.index.faiss_index`, :mod:`~asymmetry.index.lexical` and
:mod:`~asymmetry.index.dedup`.
"""

from __future__ import annotations

from asymmetry.index.build import DEFAULT_SHARD_SIZE, build_index, embed_passages, ensure_index
from asymmetry.index.chunking import Chunk, ChunkingConfig, chunk_article, chunk_articles, split_sentences
from asymmetry.index.config import IndexConfig
from asymmetry.index.corpus import READERS, Article, Corpus, CorpusReader, open_corpus, register_reader
from asymmetry.index.dedup import is_near_duplicate, minhash
from asymmetry.index.faiss_index import INDEX_TYPES, IndexType, choose_index_type, register_index_type
from asymmetry.index.lexical import LEXICAL_SPEC, bm25_tokenize
from asymmetry.index.manifest import Manifest, default_index_dir, load_manifest, read_manifest, resolve_index_dir
from asymmetry.index.store import PassageStore, StoredPassage, write_store

__all__ = [
    "DEFAULT_SHARD_SIZE",
    "INDEX_TYPES",
    "LEXICAL_SPEC",
    "READERS",
    "Article",
    "Chunk",
    "ChunkingConfig",
    "Corpus",
    "CorpusReader",
    "IndexConfig",
    "IndexType",
    "Manifest",
    "PassageStore",
    "StoredPassage",
    "bm25_tokenize",
    "build_index",
    "choose_index_type",
    "chunk_article",
    "chunk_articles",
    "default_index_dir",
    "embed_passages",
    "ensure_index",
    "is_near_duplicate",
    "load_manifest",
    "minhash",
    "open_corpus",
    "read_manifest",
    "register_index_type",
    "register_reader",
    "resolve_index_dir",
    "split_sentences",
    "write_store",
]
