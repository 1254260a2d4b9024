"""The default index over the 10,033 Vital Articles leads, built on first use in <ASYMMETRY_HOME>/indexes/default."""

from __future__ import annotations

import json

import pytest

from asymmetry.cli import main
from asymmetry.index import ensure_index
from asymmetry.retrieval import Retriever


@pytest.mark.slow
def test_default_index_is_built_on_first_use_and_answers(capsys, embedder):
    root = ensure_index(embedder=embedder)  # builds it the first time (~10k passages), reuses it afterwards
    r = Retriever.open(root, embedder=embedder)
    assert r.manifest.article_count == 10_033 and r.manifest.passage_count >= 10_033
    assert r.manifest.index_type == "flat" and r.manifest.corpus["source"] == "default"
    for mode in ("dense", "lexical", "hybrid"):
        titles = [p.title for p in r.search("Who developed the theory of general relativity?", k=5, mode=mode)]
        assert "Albert Einstein" in titles or "General relativity" in titles, (mode, titles)
    found = r.search("photosynthesis in plants", k=3)
    assert found[0].title == "Photosynthesis"  # labelled "Uncategorized" in the corpus; its neighbours are not
    assert "Biology and health sciences" in [p.metadata["topic"] for p in found]
    assert main(["search", "What is the capital of France?", "--json"]) == 0
    assert "Paris" in [p["title"] for p in json.loads(capsys.readouterr().out)]
