"""Online retrieval: dense FAISS, BM25 and hybrid (RRF) search, near-duplicate removal, cross-encoder reranking,
context packing and a langchain-core retriever.

    from asymmetry.retrieval import Retriever, pack_passages
    retriever = Retriever.open(index_dir, config=config, embedder=embedder)  # opens a built index, never builds
    passages = retriever.search(question, k=5, query_embedding=embedding)

Exports :class:`Retriever`, :class:`Passage`, :class:`RetrievalConfig`, :class:`CrossEncoderReranker`,
:func:`pack_passages`, :func:`format_passage`, :func:`reciprocal_rank_fusion`, :func:`remove_near_duplicates` and
(imported on first access, as it loads langchain-core) :class:`WikipediaRetriever`.
"""

from __future__ import annotations

from asymmetry.retrieval.config import RetrievalConfig
from asymmetry.retrieval.packing import format_passage, pack_passages
from asymmetry.retrieval.rerank import CrossEncoderReranker
from asymmetry.retrieval.retriever import Passage, Retriever, reciprocal_rank_fusion, remove_near_duplicates

__all__ = [
    "CrossEncoderReranker",
    "Passage",
    "RetrievalConfig",
    "Retriever",
    "WikipediaRetriever",
    "format_passage",
    "pack_passages",
    "reciprocal_rank_fusion",
    "remove_near_duplicates",
]


def __getattr__(name: str):
    if name == "WikipediaRetriever":  # langchain-core is imported only when asked for
        from asymmetry.retrieval.langchain import WikipediaRetriever

        return WikipediaRetriever
    raise AttributeError(name)
