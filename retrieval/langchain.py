"""A langchain-core ``BaseRetriever`` over an asymmetry index: returns ``Document``s with title, url, score."""

from __future__ import annotations

from typing import Any

from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from pydantic import ConfigDict, PrivateAttr

from asymmetry.embedder import Embedder
from asymmetry.index.build import ensure_index
from asymmetry.retrieval.retriever import Retriever


class WikipediaRetriever(BaseRetriever):
    """``WikipediaRetriever(index_dir=None, k=5, mode="hybrid").invoke("question")`` (``k`` may also be passed to
    ``invoke``, and so may ``rerank=True/False``; a reranked document's ``score`` is the cross-encoder's logit).
    ``index_dir=None`` uses the default index, built on first use. ``retriever`` (an open
    :class:`Retriever`) or ``embedder`` (a shared :class:`Embedder`) may be passed in."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    index_dir: str | None = None
    k: int = 5
    mode: str = "hybrid"
    _retriever: Any = PrivateAttr(default=None)
    _embedder: Any = PrivateAttr(default=None)

    def __init__(self, retriever: Retriever | None = None, embedder: Embedder | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        self._retriever = retriever
        self._embedder = embedder

    @property
    def retriever(self) -> Retriever:
        if self._retriever is None:
            index_dir = self.index_dir or ensure_index(embedder=self._embedder)
            self._retriever = Retriever.open(index_dir, embedder=self._embedder)
        return self._retriever

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun,
                                k: int | None = None, **kwargs: Any) -> list[Document]:
        passages = self.retriever.search(query, k=k or self.k, mode=kwargs.get("mode", self.mode),
                                         rerank=kwargs.get("rerank"))
        return [
            Document(page_content=p.text, id=str(p.id),
                     metadata={"title": p.title, "url": p.url, "score": p.score, "passage_id": p.id, **p.metadata})
            for p in passages
        ]
