"""Free-form answer metrics on real examples, against hand-computed values."""

from __future__ import annotations

import pytest

from asymmetry.eval.answers import (
    PRIMARY_METRIC,
    citations,
    contains_answer,
    exact_match,
    normalize_answer,
    passages_with_answer,
    qa_metrics,
    score_answer,
    strip_citations,
    token_f1,
)


def test_normalisation_lowercases_drops_punctuation_articles_and_extra_spaces():
    assert normalize_answer("The  Beatles!") == "beatles"
    assert normalize_answer("an apple, the pie and A.B.C.") == "apple pie and abc"
    assert normalize_answer("  Sunset Blvd. ") == "sunset blvd"
    assert normalize_answer("“Paris”") == "paris"  # Unicode quotes are punctuation too
    assert normalize_answer("Theatre") == "theatre"  # "the" only as a whole word
    assert normalize_answer("") == ""


def test_exact_match_takes_the_best_alias():
    aliases = ["Sunset Boulevard", "Sunset Blvd"]
    assert exact_match("sunset blvd.", aliases) == 1.0
    assert exact_match("The Sunset Boulevard", aliases) == 1.0
    assert exact_match("Sunset Boulevard musical", aliases) == 0.0


def test_token_f1_hand_computed():
    # reply tokens: capital of france is paris (5); gold: paris (1); 1 shared: P = 1/5, R = 1, F1 = 2PR/(P+R) = 1/3
    assert token_f1("The capital of France is Paris.", ["Paris"]) == pytest.approx(1 / 3)
    # december 14 1972 vs 14 december 1972 utc: 3 shared, P = 1, R = 3/4, F1 = 1.5/1.75 = 6/7
    assert token_f1("December 14, 1972", ["14 December 1972 UTC"]) == pytest.approx(6 / 7)
    # the best alias counts; repeated tokens are counted with multiplicity (min of the counts)
    assert token_f1("December 14, 1972", ["nothing", "December 1972"]) == pytest.approx(2 * (2 / 3) / (5 / 3))
    assert token_f1("new new york", ["new york"]) == pytest.approx(2 * (2 / 3) * 1 / (2 / 3 + 1))
    assert token_f1("Rome", ["Paris"]) == 0.0


def test_contains_needs_whole_tokens_in_order():
    assert contains_answer("It was in December 1972.", ["1972"])
    assert contains_answer("It was in December 1972.", ["December, 1972"])
    assert not contains_answer("The party was fun.", ["art"])
    assert not contains_answer("1972 December", ["December 1972"])
    assert contains_answer("Romeo and Juliet was written by William Shakespeare.", ["William Shakespeare"])
    assert not contains_answer("The end", ["The"])  # an alias that normalises to nothing never matches


def test_citation_markers():
    assert citations("Paris [1]. See [2, 3] and [1][4]; also [ 5 ;6 ]") == [1, 2, 3, 4, 5, 6]
    assert citations("[12] and [a] and [1-2] and []") == [12]
    assert citations("no citations") == []
    assert strip_citations("Paris [1][2].").replace(" ", "") == "Paris."


def test_a_marker_digit_is_not_an_answer():
    assert not score_answer("Moons [1]", ["1"], ["One moon."])["contains"]
    assert score_answer("There is 1 moon [1]", ["1"], ["It has 1 moon."])["contains"]
    # the marker does not spoil exact match either
    assert score_answer("Paris [1]", ["Paris"], ["Paris is the capital of France."])["em"] == 1.0


PASSAGES = ["Apollo 11\nApollo 11 landed on the Moon in July 1969.",
            "Apollo 17\nApollo 17 left the Moon in December 1972, the last crewed landing."]


def test_score_answer_grounding_and_citation_validity():
    s = score_answer("It was in December 1972 [2].", ["December 1972"], PASSAGES)
    assert s["contains"] == 1.0 and s["cited"] == [2] and s["citation_valid"] is True
    assert s["answer_in_passages"] is True and s["passages_with_answer"] == [2] and s["grounded"] is True
    assert s["length"] == 5  # words, the citation marker not counted
    wrong_cite = score_answer("December 1972 [1]", ["December 1972"], PASSAGES)
    assert wrong_cite["grounded"] is False and wrong_cite["citation_valid"] is True
    invalid = score_answer("December 1972 [1][3]", ["December 1972"], PASSAGES)
    assert invalid["citation_valid"] is False and invalid["grounded"] is False
    wrong = score_answer("In 1969 [1].", ["December 1972"], PASSAGES)
    assert wrong["contains"] == 0.0 and wrong["grounded"] is None  # grounding is only asked of right answers
    closed = score_answer("December 1972", ["December 1972"], [])
    assert closed["answer_in_passages"] is False and closed["grounded"] is None and closed["citation_valid"] is None
    assert passages_with_answer(PASSAGES, ["Moon"]) == [1, 2]


def test_qa_metrics_over_a_run():
    scores = [
        score_answer("It was in December 1972 [2].", ["December 1972"], PASSAGES),  # right, grounded, in passages
        score_answer("December 1972 [1][3]", ["December 1972"], PASSAGES),  # right, not grounded, invalid citation
        score_answer("In 1969.", ["December 1972"], PASSAGES),  # wrong, no citation, in passages
        score_answer("Paris", ["Paris"], PASSAGES),  # right (exact), answer not in passages
        score_answer("Lyon. (Not in the sources)", ["Paris"], PASSAGES),  # wrong, says the passages lack it
    ]
    m = qa_metrics(scores)
    assert m[PRIMARY_METRIC] == pytest.approx(3 / 5)
    assert m["em"] == pytest.approx(2 / 5)  # "Paris" and "December 1972 [1][3]" (markers stripped)
    assert m["cite_rate"] == pytest.approx(2 / 5)
    assert m["citation_valid"] == pytest.approx(1 / 2)
    assert m["grounding"] == pytest.approx(1 / 2)  # of the two right answers whose answer is in the passages
    assert m["retrieval_ceiling"] == pytest.approx(3 / 5)
    assert m["contains_answer_in_passages"] == pytest.approx(2 / 3)
    assert m["contains_answer_not_in_passages"] == pytest.approx(1 / 2)
    assert m["marked_answer_not_in_passages"] == pytest.approx(1 / 2) and m["marked_answer_in_passages"] == 0.0
    assert m["n"] == 5.0 and m["n_answer_in_passages"] == 3.0
    assert m["length"] == pytest.approx((5 + 2 + 2 + 1 + 5) / 5)


def test_undefined_shares_are_none_not_nan():
    m = qa_metrics([score_answer("no idea", ["Paris"], [])])
    assert m["citation_valid"] is None and m["grounding"] is None and m["contains_answer_in_passages"] is None
    assert m["retrieval_ceiling"] == 0.0 and m["contains"] == 0.0
    empty = qa_metrics([])
    assert empty["contains"] is None and empty["n"] == 0.0
