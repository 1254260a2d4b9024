from __future__ import annotations

import pytest

from asymmetry.errors import AsymmetryError
from asymmetry.retrieval import Passage, pack_passages


@pytest.fixture(scope="module")
def tokenizer(smollm):
    return smollm.tokenizer


def _passages():
    return [
        Passage(0, "Photosynthesis", "Plants turn light, water and carbon dioxide into sugar and oxygen. " * 3, "", 3.0),
        Passage(1, "Mitochondrion", "The mitochondrion is the powerhouse of the cell. " * 20, "", 2.0),
        Passage(2, "Oxygen", "Oxygen is element 8.", "", 1.0),
    ]


def test_packs_in_rank_order_within_the_budget(tokenizer):
    ps = _passages()
    n = lambda s: len(tokenizer.encode(s, add_special_tokens=False))
    everything, used = pack_passages(ps, tokenizer, 10_000)
    assert [p.id for p in used] == [0, 1, 2]
    assert everything.startswith("[1] Photosynthesis\n") and "\n\n[3] Oxygen\nOxygen is element 8." in everything
    budget = n(everything) - 50  # too small for all three: the long second passage is skipped, the third still fits
    text, used = pack_passages(ps, tokenizer, budget)
    assert [p.id for p in used] == [0, 2]
    assert n(text) <= budget and text.startswith("[1] Photosynthesis") and "[2] Oxygen" in text
    text, used = pack_passages(ps, tokenizer, 3)
    assert (text, used) == ("", [])


def test_bad_budget(tokenizer):
    with pytest.raises(AsymmetryError, match="max_tokens"):
        pack_passages(_passages(), tokenizer, 0)
