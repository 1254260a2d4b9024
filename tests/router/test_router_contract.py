"""The router interface suite: every router implementation (the committed default, a freshly trained logistic head
and a one-hidden-layer MLP head) passes the same checks on real held-out questions."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from asymmetry.errors import AsymmetryError
from asymmetry.router import DEFAULT_ROUTER_FILE, Route, Router
from asymmetry.router.metrics import evaluate
from asymmetry.router.model import RouterTrainSettings, train


@pytest.fixture(scope="module", params=["committed", "logistic", "mlp"])
def any_router(request, small_examples, small_vectors):
    if request.param == "committed":
        return Router.load(DEFAULT_ROUTER_FILE)
    return train(
        small_vectors["train"], [e.label for e in small_examples["train"]],
        small_vectors["calibration"], [e.label for e in small_examples["calibration"]],
        settings=RouterTrainSettings(head=request.param, epochs=40),  # each head's default learning rate
    )


def test_route_gives_calibrated_probabilities_top2_and_fallback(any_router, small_vectors):
    assert any_router.labels == ["commonsense", "scholar", "science"] and any_router.fallback == "general"
    assert any_router.temperature > 0 and any_router.dim == 384
    x = small_vectors["heldout"]  # (N, D)
    routes = any_router.route_batch(x)
    for i, r in enumerate(routes):
        assert isinstance(r, Route)
        assert sum(r.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
        assert r.confidence == max(r.probabilities.values())
        assert r.top2[0] == (r.label, r.confidence) and r.top2[0][1] >= r.top2[1][1] and r.top2[1][0] != r.label
        assert r.expert == (any_router.fallback if r.confidence < any_router.threshold else r.label)
        if i < 10:  # the single-question fast path agrees with the batch path
            one = any_router.route(x[i])
            assert one.expert == r.expert and one.top2[1][0] == r.top2[1][0]
            assert one.probabilities == pytest.approx(r.probabilities, abs=1e-5)
    for threshold, expect_fallback in ((1.0, True), (0.0, False)):
        strict = dataclasses.replace(any_router, threshold=threshold)
        assert all(strict.route(v).fallback is expect_fallback for v in x[:20])
        assert all((strict.route(v).expert == "general") is expect_fallback for v in x[:20])
    with pytest.raises(AsymmetryError, match="384-d embeddings"):
        any_router.route(np.zeros(768, dtype=np.float32))
    with pytest.raises(AsymmetryError, match="NaN"):
        any_router.route(np.full(384, np.nan, dtype=np.float32))
    with pytest.raises(AsymmetryError, match="route_batch"):
        any_router.route(x[:2])


def test_beats_chance_and_survives_a_save_load_roundtrip(any_router, small_examples, small_vectors, tmp_path,
                                                          default_experts):
    y = [e.label for e in small_examples["heldout"]]
    report = evaluate(any_router, small_vectors["heldout"], y)
    assert report.metrics["accuracy"] > 0.6  # chance is about 1/3
    loaded = Router.load(any_router.save(tmp_path / "r.json"), expert_names=default_experts)
    np.testing.assert_allclose(loaded.predict_proba(small_vectors["heldout"]),
                               any_router.predict_proba(small_vectors["heldout"]), rtol=1e-5, atol=1e-7)
