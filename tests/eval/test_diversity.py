"""Diversity metrics (eval/diversity.py) on real text: Vital Articles leads of the default corpus, and a real loop of a
small model's story (issue 17's `generate "Once upon a time" --mirostat 2 --tau 3` output), against hand-computed
values."""

from __future__ import annotations

import itertools

import pytest

from asymmetry.eval.diversity import distinct_n, ngrams, repetition_rate, surprise_gaps, text_metrics, words
from asymmetry.index.corpus import open_corpus

# SmolLM2-135M's story that fell into a loop (quoted in issue 17, part 2), the sentence three times over.
LOOP = ("She smiled and said that she would take care of the little ones. I will be raising them as my own children "
        "would. I will be raising them as my own children would. I will be raising them as my own children would.")


@pytest.fixture(scope="module")
def leads() -> list[str]:
    """Ten long Vital Articles leads (varied encyclopedic prose)."""
    return [a.text for a in itertools.islice((a for a in open_corpus("default") if len(a.text.split()) > 150), 10)]


def test_words_lowercase_keep_inner_apostrophes_and_drop_punctuation():
    assert words("Don't stop — the U.S. is 2nd, isn't it?") == ["don't", "stop", "the", "u", "s", "is", "2nd",
                                                               "isn't", "it"]
    assert words("") == []


def test_distinct_n_hand_computed():
    # the cat sat on the mat the cat: 7 bigrams, (the, cat) twice -> 6 distinct
    assert distinct_n("The cat sat on the mat, the cat.", 2) == pytest.approx(6 / 7)
    assert distinct_n("The cat sat on the mat, the cat.", 1) == pytest.approx(5 / 8)
    # several texts pool their n-grams, none spans two texts
    assert distinct_n(["a b", "c d"], 2) == 1.0
    assert distinct_n(["a b", "a b"], 2) == 0.5
    assert distinct_n("one", 2) is None and distinct_n([], 2) is None
    with pytest.raises(ValueError):
        ngrams(["a"], 0)


def test_a_looping_text_repeats_more_than_varied_prose(leads):
    rates = [repetition_rate(t) for t in leads]
    assert max(rates) < 0.05, rates  # encyclopedic prose hardly repeats a 4-gram
    loop = repetition_rate(LOOP)
    # 13 + 3 x 10 = 43 words, 40 4-grams; from the second copy on the text has period 10, so the 17 4-grams
    # starting there (positions 23..39) each repeat the one 10 words earlier
    assert loop == pytest.approx(17 / 40)
    assert loop > 10 * max(rates)
    # and a lead's own opening sentence looped five times is far above the lead
    first = leads[0].split(". ")[0] + ". "
    assert repetition_rate(first * 5) > 0.7 > repetition_rate(leads[0])
    assert distinct_n(LOOP, 2) < 0.6 < min(distinct_n(t, 2) for t in leads)  # 23 of 42 bigrams distinct
    assert repetition_rate("too short") is None


def test_text_metrics_and_surprise_gaps():
    m = text_metrics(LOOP)
    assert m["words"] == 43 and m["repetition_4"] == pytest.approx(17 / 40)
    assert m["distinct_2"] < m["distinct_3"] < 1  # a longer n-gram is rarer to repeat
    segments = [{"control": None, "start": 0, "end": 3, "tau": None, "mean_surprise_bits": 0.4},
                {"control": "tau=2", "start": 4, "end": 104, "tau": 2.0, "mean_surprise_bits": 2.5},
                {"control": "tau=5", "start": 105, "end": 105, "tau": 5.0, "mean_surprise_bits": None}]
    assert surprise_gaps(segments) == [{"control": "tau=2", "tau": 2.0, "mean_surprise_bits": 2.5, "gap": 0.5,
                                        "tokens": 100}]
