"""Online retrieval: dense FAISS, BM25 and hybrid (RRF) search, near-duplicate removal, context packing and a
langchain-core retriever. ``from asymmetry.retrieval import Retriever, Passage, pack_passages``."""

from __future__ import annotations

from asymmetry.retrieval.config import RetrievalConfig
from asymmetry.retrieval.packing import pack_passages
from asymmetry.retrieval.retriever import Passage, Retriever, reciprocal_rank_fusion, remove_near_duplicates

__all__ = [
    "Passage",
    "RetrievalConfig",
    "Retriever",
    "WikipediaRetriever",
    "pack_passages",
    "reciprocal_rank_fusion",
    "remove_near_duplicates",
]


def __getattr__(name: str):
    if name == "WikipediaRetriever":  # langchain-core is imported only when asked for
        from asymmetry.retrieval.langchain import WikipediaRetriever

        return WikipediaRetriever
    raise AttributeError(name)
