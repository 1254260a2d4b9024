"""Post-hoc attribution (retrieval/attribution.py) on real default-corpus passages."""

from __future__ import annotations

import pytest

from asymmetry.index.corpus import open_corpus
from asymmetry.retrieval.attribution import attribute, citation_suffix, content_words


@pytest.fixture(scope="module")
def leads():
    wanted = {"Mona Lisa", "Leonardo da Vinci", "Albert Einstein", "General relativity", "Jupiter", "Mars"}
    found = {a.title: f"{a.title}\n{a.text}" for a in open_corpus("default") if a.title in wanted}
    assert set(found) == wanted, set(wanted) - set(found)
    return found


def test_the_passage_that_holds_the_new_words_is_cited(leads):
    passages = [leads["Jupiter"], leads["Mona Lisa"], leads["Mars"]]
    assert attribute("Leonardo da Vinci painted the Mona Lisa.", "Who painted the Mona Lisa?", passages) == [2]
    passages = [leads["General relativity"], leads["Albert Einstein"]]
    cited = attribute("Albert Einstein developed it.", "Who developed the theory of general relativity?", passages)
    assert cited and all(1 <= n <= 2 for n in cited)
    assert "einstein" in content_words(passages[cited[0] - 1])


def test_no_citation_when_no_passage_holds_the_answer(leads):
    passages = [leads["Jupiter"], leads["Mars"]]
    assert attribute("Leonardo da Vinci painted it.", "Who painted the Mona Lisa?", passages) == []
    assert attribute("The Mona Lisa.", "Who painted the Mona Lisa?", passages) == []  # no new words
    assert attribute("Leonardo da Vinci.", "Who painted the Mona Lisa?", []) == []


def test_citation_suffix_follows_wikipedia_style():
    assert citation_suffix([1, 3]) == "[1][3]" and citation_suffix([]) == ""
