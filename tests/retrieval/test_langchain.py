"""langchain-core's standard retriever tests (langchain-tests) on the real small index."""

from __future__ import annotations

import pytest
from langchain_tests.integration_tests import RetrieversIntegrationTests

from asymmetry.retrieval import RetrievalConfig, Retriever
from asymmetry.retrieval.langchain import WikipediaRetriever


class TestWikipediaRetriever(RetrieversIntegrationTests):
    @pytest.fixture(autouse=True)
    def _index(self, small_index, embedder):
        type(self)._index_dir = str(small_index)
        type(self)._embedder = embedder

    @property
    def retriever_constructor(self) -> type[WikipediaRetriever]:
        return WikipediaRetriever

    @property
    def retriever_constructor_params(self) -> dict:
        # the standard tests expect exactly k documents: the first stage alone (rerank_min_score may return fewer)
        first_stage = Retriever.open(self._index_dir, config=RetrievalConfig(rerank=False), embedder=self._embedder)
        return {"index_dir": self._index_dir, "embedder": self._embedder, "retriever": first_stage}

    @property
    def retriever_query_example(self) -> str:
        return "Which awards honour achievements in cinema?"


def test_documents_carry_metadata(small_index, embedder):
    retriever = WikipediaRetriever(index_dir=str(small_index), k=3, embedder=embedder)
    docs = retriever.invoke("Academy Awards for film")  # reranked by default, low-scoring passages dropped
    assert 1 <= len(docs) <= 3
    assert {"title", "url", "score", "passage_id", "fused_score"} <= set(docs[0].metadata)
    assert docs[0].metadata["title"] == "Academy Awards"
    plain = retriever.invoke("Academy Awards for film", rerank=False)
    assert len(plain) == 3 and "fused_score" not in plain[0].metadata
