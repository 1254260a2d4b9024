"""langchain-core's standard retriever tests (langchain-tests) on the real small index."""

from __future__ import annotations

import pytest
from langchain_tests.integration_tests import RetrieversIntegrationTests

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
        return {"index_dir": self._index_dir, "embedder": self._embedder}

    @property
    def retriever_query_example(self) -> str:
        return "Which awards honour achievements in cinema?"


def test_documents_carry_metadata(small_index, embedder):
    docs = WikipediaRetriever(index_dir=str(small_index), k=3, embedder=embedder).invoke("Academy Awards for film")
    assert len(docs) == 3
    assert {"title", "url", "score", "passage_id"} <= set(docs[0].metadata)
    assert docs[0].metadata["title"] == "Academy Awards"
