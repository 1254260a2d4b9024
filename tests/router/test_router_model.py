from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from asymmetry.embedder import Embedder
from asymmetry.errors import AsymmetryError
from asymmetry.router import Router, RouterConfig
from asymmetry.router.config import HEAD_LR, HEADS
from asymmetry.router.metrics import evaluate
from asymmetry.router.model import RouterTrainSettings, fit_temperature
from asymmetry.router.pipeline import train_router


def test_small_router_learns_the_labels(small_router, small_examples, small_vectors):
    report = evaluate(small_router, small_vectors["heldout"], [e.label for e in small_examples["heldout"]])
    assert report.primary_metric == "accuracy"
    # 3 balanced-ish classes: chance is about 1/3; 60 training questions per class already separate them
    assert report.metrics["accuracy"] > 0.6
    assert report.confusion.sum() == len(small_examples["heldout"])
    assert 0.0 <= report.metrics["ece"] <= 1.0


def test_temperature_scaling_does_not_increase_calibration_nll(small_router, small_examples, small_vectors):
    labels = small_router.labels
    y = np.array([labels.index(e.label) for e in small_examples["calibration"]])
    raw = small_router.logits(small_vectors["calibration"]) * small_router.temperature  # (N, L) before scaling

    def nll(t):
        z = raw / t
        z = z - z.max(axis=1, keepdims=True)
        return float(-(z[np.arange(len(y)), y] - np.log(np.exp(z).sum(axis=1))).mean())

    t = fit_temperature(raw, y)
    assert t == pytest.approx(small_router.temperature, rel=1e-6)
    assert nll(t) <= nll(1.0) + 1e-9
    assert nll(t) <= min(nll(t * 0.8), nll(t * 1.25)) + 1e-9


def test_save_load_roundtrip_is_atomic_and_checked(small_router, small_vectors, tmp_path, default_experts):
    path = small_router.save(tmp_path / "r")
    assert path == tmp_path / "r" / "router.json" and not list(path.parent.glob(".*"))  # no temp file left
    assert path.stat().st_mode & 0o777 == 0o644
    manifest = json.loads(path.read_text())["manifest"]
    assert manifest["embedding_model"] == "all-MiniLM-L6-v2" and manifest["dim"] == 384
    assert manifest["experts"] == ["commonsense", "scholar", "science", "general"]
    loaded = Router.load(path, expert_names=default_experts)
    np.testing.assert_allclose(
        loaded.predict_proba(small_vectors["heldout"]), small_router.predict_proba(small_vectors["heldout"]), rtol=1e-6
    )
    assert Router.load(path, threshold=0.9).threshold == 0.9

    with pytest.raises(AsymmetryError, match=r"missing: \['scholar'\].*asymmetry router train"):
        Router.load(path, expert_names=["science", "commonsense", "general"])
    with pytest.raises(AsymmetryError, match="missing: \\['general'\\]"):
        Router.load(path, expert_names=["science", "commonsense", "scholar"])
    other_model = tmp_path / "my-embedder"
    other_model.mkdir()
    with pytest.raises(AsymmetryError, match="trained on embeddings of 'all-MiniLM-L6-v2'.*retrain"):
        Router.load(path, embedding_model=str(other_model))
    with pytest.raises(AsymmetryError, match="embedder passed to Router.load"):
        Router.load(path, embedder=Embedder(str(other_model)))
    with pytest.raises(AsymmetryError, match="384-d embeddings"):
        loaded.route(np.zeros(768, dtype=np.float32))
    with pytest.raises(AsymmetryError, match="no router at"):
        Router.load(tmp_path / "absent.json")
    path.write_text(path.read_text()[:200])
    with pytest.raises(AsymmetryError, match="router file .* is damaged .*asymmetry router train --out"):
        Router.load(path)  # the checksum written beside it catches the cut
    path.with_name(path.name + ".sha256").unlink()
    with pytest.raises(AsymmetryError, match="unreadable"):
        Router.load(path)  # without a checksum (a file from before checksums) the parse still fails cleanly


def test_route_text_embeds_with_the_router_model(small_router, small_examples, small_vectors, embedder):
    text = small_examples["heldout"][0].text
    router = dataclasses.replace(small_router, embedder=embedder)
    r = router.route_text(text)
    expected = router.route(small_vectors["heldout"][0])
    assert r.label == expected.label and r.confidence == pytest.approx(expected.confidence, abs=1e-4)
    assert [x.label for x in router.route_text([text, text])] == [r.label, r.label]
    with pytest.raises(AsymmetryError, match="non-empty"):
        router.route_text("  ")


def test_train_settings_follow_the_config_head():
    assert RouterTrainSettings().head == RouterConfig().head
    for head in HEADS:
        assert RouterTrainSettings(head=head).lr == HEAD_LR[head]
        s = RouterTrainSettings.from_config(RouterConfig(head=head, hidden=16, epochs=3))
        assert (s.head, s.hidden, s.epochs, s.lr) == (head, 16, 3, HEAD_LR[head])
    assert RouterTrainSettings(head="mlp", lr=0.1).lr == 0.1
    with pytest.raises(AsymmetryError, match="unknown"):
        RouterTrainSettings(head="tree")


def test_adding_an_expert_is_one_retrain_and_checked_against_the_registry(small_examples, tmp_path, default_experts,
                                                                           embedder):
    """TriviaQA questions move from `scholar` to a new `trivia` expert through a mapping edit plus user JSONL."""
    mapping = tmp_path / "mapping.toml"
    mapping.write_text('[experts]\nscience = ["arc_easy", "sciq"]\ncommonsense = ["social_iqa", "piqa"]\n'
                       'scholar = ["mmlu", "nq_open"]\n')
    data = tmp_path / "router_trivia_questions.jsonl"
    data.write_text("".join(
        json.dumps({"question": e.text, "expert": "trivia", "split": part}) + "\n"
        for part in ("train", "calibration", "heldout") for e in small_examples[part] if e.source == "trivia_qa"
    ))
    cfg = RouterConfig(mapping=str(mapping), max_train_per_source=20, max_calibration_per_source=10,
                       max_heldout_per_source=10)
    with pytest.raises(AsymmetryError, match=r"\['trivia'\] are not experts"):
        train_router(cfg, data_files=[str(data)], expert_names=default_experts, save=False, embedder=embedder)
    router, report = train_router(cfg, data_files=[str(data)], expert_names=[*default_experts, "trivia"],
                                  out=tmp_path / "r.json", progress=False, embedder=embedder)
    assert router.embedder is embedder
    assert router.labels == ["commonsense", "scholar", "science", "trivia"]
    assert report.confusion.shape == (4, 4) and report.metrics["recall_trivia"] > 0
    assert router.manifest["data"]["counts"]["train"]["file:router_trivia_questions.jsonl"] == 20
    with pytest.raises(AsymmetryError, match=r"missing: \['trivia'\]"):
        Router.load(tmp_path / "r.json", expert_names=default_experts)
    assert Router.load(tmp_path / "r.json", expert_names=[*default_experts, "trivia"]).labels == router.labels
