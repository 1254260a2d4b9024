"""The committed default router, checked on held-out questions it was not trained on."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from asymmetry.config import Config
from asymmetry.errors import AsymmetryError
from asymmetry.router import DEFAULT_ROUTER_FILE, Router, default_router_path, home_router_path
from asymmetry.router.baselines import KeywordBaseline
from asymmetry.router.metrics import classification_metrics, evaluate


@pytest.fixture(scope="module")
def default_router(default_experts):
    return Router.load(DEFAULT_ROUTER_FILE, expert_names=default_experts)


def test_committed_router_is_small_and_self_describing(default_router):
    assert DEFAULT_ROUTER_FILE.stat().st_size < 400_000
    m = json.loads(DEFAULT_ROUTER_FILE.read_text())["manifest"]
    assert m["embedding_model"] == "all-MiniLM-L6-v2" and m["dim"] == 384
    assert m["labels"] == ["commonsense", "scholar", "science"] and m["fallback"] == "general"
    assert m["experts"] == ["commonsense", "scholar", "science", "general"]
    assert set(m["data"]["counts"]["heldout"]) == {d for sets in m["data"]["mapping"].values() for d in sets}
    assert {"accuracy", "ece", "macro_f1"} <= set(m["heldout"]["metrics"])
    assert default_router.temperature > 0


def test_committed_router_routes_held_out_questions(default_router, small_examples, small_vectors):
    y = [e.label for e in small_examples["heldout"]]
    report = evaluate(default_router, small_vectors["heldout"], y)
    assert report.metrics["accuracy"] >= 0.8
    for label in default_router.labels:
        assert report.metrics[f"recall_{label}"] >= 0.6, label
    keyword = KeywordBaseline().fit([e.text for e in small_examples["train"]], [e.label for e in small_examples["train"]])
    kw_metrics, _ = classification_metrics(y, keyword.predict([e.text for e in small_examples["heldout"]]),
                                           default_router.labels)
    assert report.metrics["accuracy"] > kw_metrics["accuracy"]


def test_default_location_prefers_a_retrained_router(monkeypatch, tmp_path, default_router):
    monkeypatch.setenv("ASYMMETRY_HOME", str(tmp_path))
    assert default_router_path() == DEFAULT_ROUTER_FILE
    retrained = dataclasses.replace(default_router, threshold=0.77, manifest=dict(default_router.manifest))
    retrained.save()
    assert home_router_path() == tmp_path / "router" / "router.json" == default_router_path()
    assert Router.load().threshold == pytest.approx(0.77)


def test_from_config_applies_threshold_fallback_and_embedding_model(tmp_path, default_experts):
    cfg = Config.from_dict({"router": {"path": str(DEFAULT_ROUTER_FILE), "threshold": 0.99}})
    router = Router.from_config(cfg, default_experts)
    x = np.zeros((1, 384), dtype=np.float32)
    x[0, 0] = 1.0
    assert router.threshold == 0.99 and router.route(x).expert == "general"
    cfg = Config.from_dict({"router": {"path": str(DEFAULT_ROUTER_FILE), "fallback": "chat"}})
    with pytest.raises(AsymmetryError, match="missing: \\['chat'\\]"):
        Router.from_config(cfg, default_experts)
    cfg = Config.from_dict({"index": {"embedding_model": str(tmp_path)}, "router": {"path": str(DEFAULT_ROUTER_FILE)}})
    with pytest.raises(AsymmetryError, match="configured embedding model"):
        Router.from_config(cfg, default_experts)
    with pytest.raises(AsymmetryError, match="router.threshold"):
        Config.from_dict({"router": {"threshold": 2}})
