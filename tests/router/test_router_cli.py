"""The router commands, run in-process through the real ``asymmetry`` entry point."""

from __future__ import annotations

import json

import pytest

from asymmetry.cli import main
from asymmetry.router import DEFAULT_ROUTER_FILE, Router


@pytest.fixture(scope="module")
def labelled_jsonl(small_examples, tmp_path_factory):
    """Real shipped questions written as user JSONL with explicit splits (4 per source in train, 2 in the others)."""
    path = tmp_path_factory.mktemp("router_cli") / "router_cli_questions.jsonl"
    lines = []
    for part, per_source in (("train", 4), ("calibration", 2), ("heldout", 2)):
        seen: dict[str, int] = {}
        for e in small_examples[part]:
            if seen.get(e.source, 0) < per_source:
                seen[e.source] = seen.get(e.source, 0) + 1
                lines.append(json.dumps({"question": e.text, "expert": e.label, "split": part}))
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def cli_router(labelled_jsonl, tmp_path_factory):
    out = tmp_path_factory.mktemp("router_out") / "trained.json"
    rc = main(["router", "train", "--only-data", "--data", str(labelled_jsonl), "--out", str(out), "--json"])
    assert rc == 0 and out.is_file()
    return out


def test_train_then_eval_from_the_command_line(cli_router, labelled_jsonl, capsys):
    manifest = json.loads(cli_router.read_text())["manifest"]
    assert manifest["labels"] == ["commonsense", "scholar", "science"] and manifest["fallback"] == "general"
    assert manifest["data"]["counts"]["train"] == {"file:router_cli_questions.jsonl": 44}
    assert manifest["heldout"]["primary_metric"] == "accuracy"
    capsys.readouterr()
    rc = main(["router", "eval", "--router", str(cli_router), "--only-data", "--data", str(labelled_jsonl), "--json"])
    report = json.loads(capsys.readouterr().out)
    assert rc == 0 and sum(map(sum, report["confusion"])) == 22
    assert report["metrics"]["accuracy"] == pytest.approx(manifest["heldout"]["metrics"]["accuracy"])
    rc = main(["router", "eval", "--router", str(cli_router), "--only-data", "--data", str(labelled_jsonl)])
    text = capsys.readouterr().out
    assert rc == 0 and "confusion" in text and "precision" in text and "ECE" in text


def test_route_json_matches_the_library(small_examples, capsys):
    question = small_examples["heldout"][0].text
    rc = main(["route", question, "--json", "--router", str(DEFAULT_ROUTER_FILE)])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and {"expert", "confidence", "probabilities"} <= set(out)
    assert sum(out["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    expected = Router.load(DEFAULT_ROUTER_FILE).route_text(question)
    assert out["expert"] == expected.expert and out["confidence"] == pytest.approx(expected.confidence, abs=1e-5)
    rc = main(["route", question, "--threshold", "1", "--router", str(DEFAULT_ROUTER_FILE)])
    assert rc == 0 and capsys.readouterr().out.startswith("general ")


def test_cli_errors_are_one_line_with_exit_code_2(tmp_path, capsys):
    rc = main(["route", "Why is the sky blue?", "--threshold", "1.5", "--router", str(DEFAULT_ROUTER_FILE)])
    assert rc == 2 and "--threshold 1.5" in capsys.readouterr().err
    rc = main(["router", "train", "--only-data", "--data", str(tmp_path / "none.jsonl"), "--out", str(tmp_path)])
    assert rc == 2 and "none.jsonl does not exist" in capsys.readouterr().err
    rc = main(["router", "eval", "--router", str(tmp_path / "missing.json")])
    assert rc == 2 and "no router at" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # nothing half-written
