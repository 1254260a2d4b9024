from __future__ import annotations

import numpy as np
import pytest

from asymmetry.errors import AsymmetryError
from asymmetry.router.baselines import KeywordBaseline, NearestCentroid
from asymmetry.router.metrics import classification_metrics, expected_calibration_error


def test_classification_metrics_match_a_hand_count():
    labels = ["a", "b", "c"]
    y_true = ["a", "a", "a", "b", "b", "c"]
    y_pred = ["a", "a", "b", "b", "c", "c"]
    m, conf = classification_metrics(y_true, y_pred, labels)
    assert conf.tolist() == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["precision_a"] == 1.0 and m["recall_a"] == pytest.approx(2 / 3)
    assert m["precision_b"] == pytest.approx(1 / 2) and m["recall_b"] == pytest.approx(1 / 2)
    assert m["precision_c"] == pytest.approx(1 / 2) and m["recall_c"] == 1.0
    f1 = [2 * 1 * (2 / 3) / (1 + 2 / 3), 0.5, 2 * 0.5 / 1.5]
    assert m["macro_f1"] == pytest.approx(np.mean(f1))
    with pytest.raises(AsymmetryError, match=r"\['z'\]"):
        classification_metrics(["z"], ["a"], labels)


def test_expected_calibration_error():
    # every prediction at confidence 0.8, 80% correct: perfectly calibrated
    conf = np.full(10, 0.8)
    assert expected_calibration_error(conf, np.array([1] * 8 + [0] * 2)) == pytest.approx(0.0)
    # two bins: 0.95 confident and always right (gap 0.05), 0.55 confident and always wrong (gap 0.55)
    conf = np.array([0.95, 0.95, 0.55, 0.55])
    assert expected_calibration_error(conf, np.array([1, 1, 0, 0])) == pytest.approx(0.5 * 0.05 + 0.5 * 0.55)


def test_keyword_baseline_learns_distinguishing_words():
    texts = [f"which planet orbits the star number {i}" for i in range(10)]
    texts += [f"how would Alex feel after the party {i}" for i in range(10)]
    labels = ["science"] * 10 + ["commonsense"] * 10
    kb = KeywordBaseline(k=5, min_df=3).fit(texts, labels)
    assert {"planet", "orbits", "star"} <= set(kb.keywords["science"])
    assert {"feel", "party"} <= set(kb.keywords["commonsense"])
    assert kb.predict(["the planet and the star", "Jo will feel sad", "nothing matches here"]) == [
        "science", "commonsense", kb.default,
    ]


def test_nearest_centroid():
    x = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9]], dtype=np.float32)
    nc = NearestCentroid().fit(x, ["a", "a", "b", "b"])
    assert nc.predict(np.array([[0.8, 0.3], [0.2, 0.7]], dtype=np.float32)) == ["a", "b"]
