"""``asymmetry eval mc`` end to end on real shipped questions and the real default base (bare, no retrieval)."""

from __future__ import annotations

import csv
import json

import pytest

from asymmetry.cli import main
from asymmetry.config import EvalConfig
from asymmetry.engine import Engine
from asymmetry.errors import AsymmetryError
from asymmetry.eval.mcfile import export_rows, read_mc_csv, write_mc_csv
from asymmetry.eval.runner import run_mc
from asymmetry.eval.scoring import score_options

N = 4


@pytest.fixture(scope="module")
def arc_csv(tmp_path_factory):
    return write_mc_csv(export_rows("arc_easy", "validation", limit=N), tmp_path_factory.mktemp("mc") / "arc.csv")


@pytest.fixture(scope="module")
def base_cfg():
    return EvalConfig(retrieval=False, expert="base", batch_size=4)


@pytest.fixture(scope="module")
def engine(pool):
    """The default config's engine on the session's model pool (the bare base is loaded once)."""
    return Engine(pool=pool)


@pytest.fixture(scope="module")
def full_run(engine, arc_csv, base_cfg, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    return out, run_mc(arc_csv, out, base_cfg, engine=engine, progress=False)


def test_outputs(full_run, arc_csv, engine):
    out, _ = full_run
    rows = read_mc_csv(arc_csv)
    with open(out / "submission.csv", newline="") as fh:
        sub = list(csv.DictReader(fh))
    assert [s["id"] for s in sub] == [r.id for r in rows]
    for s, row in zip(sub, rows):
        letters = s["prediction"].split(" ")
        assert len(letters) == 3 and len(set(letters)) == 3 and set(letters) <= set(row.letters)
    # the ranking is the model's: the top letter is the option that score_options likes best
    first = rows[0]
    _, bare = engine.expert("base")
    scores = score_options(bare.model, bare.tokenizer, f"Question: {first.prompt}\nAnswer:",
                           [" " + o for o in first.options.values()])
    assert sub[0]["prediction"][0] == first.letters[max(range(len(scores)), key=scores.__getitem__)]
    saved = json.loads((out / "report.json").read_text())
    assert saved["primary_metric"] == "map@3" and saved["questions"] == N and saved["answered"] == N
    assert 0.0 <= saved["accuracy"] <= saved["map@3"] <= 1.0
    assert set(saved["per_expert"]) == {"base"} and set(saved["per_source"]) == {"arc_easy"}
    assert saved["timings"]["questions_per_s"] > 0
    assert (out / "accuracy_by_expert.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_resume_after_interruption(full_run, arc_csv, base_cfg, engine, tmp_path):
    out, report = full_run
    lines = (out / "predictions.jsonl").read_text().splitlines()
    assert len(lines) == N
    # an interrupted run: two questions logged, the third cut mid-line
    (tmp_path / "predictions.jsonl").write_text("\n".join(lines[:2]) + "\n" + lines[2][:20])
    (tmp_path / "run.json").write_text((out / "run.json").read_text())
    with pytest.raises(AsymmetryError, match="pass --resume to continue it"):
        run_mc(arc_csv, tmp_path, base_cfg, engine=engine, progress=False)
    with pytest.raises(AsymmetryError, match="setting normalize was 'none', now 'char'"):
        run_mc(arc_csv, tmp_path, EvalConfig(retrieval=False, expert="base", normalize="char"), engine=engine,
               resume=True, progress=False)
    resumed = run_mc(arc_csv, tmp_path, base_cfg, engine=engine, resume=True, progress=False, plot=False)
    assert resumed["timings"]["scored_this_run"] == N - 2
    assert (tmp_path / "submission.csv").read_text() == (out / "submission.csv").read_text()
    assert resumed["map@3"] == pytest.approx(report["map@3"])


def test_resume_rescores_exactly_the_changed_rows(full_run, arc_csv, base_cfg, engine, tmp_path, caplog):
    out, report = full_run
    with open(arc_csv, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    rows[1]["prompt"] = rows[1]["prompt"] + " (edited)"  # a changed question
    rows[2]["answer"] = next(c for c in "ABCD" if c != rows[2]["answer"] and rows[2].get(c))  # a changed answer
    edited = tmp_path / "arc.csv"
    with open(edited, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    run = tmp_path / "run"
    run.mkdir()
    (run / "predictions.jsonl").write_text((out / "predictions.jsonl").read_text())
    settings = json.loads((out / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**settings, "file": str(edited.resolve())}))
    resumed = run_mc(edited, run, base_cfg, engine=engine, resume=True, progress=False, plot=False)
    assert resumed["timings"]["scored_this_run"] == 2
    ids = [r.id for r in read_mc_csv(edited)]
    assert f"scored again: {ids[1]}, {ids[2]}" in caplog.text
    logged = {}
    for line in (run / "predictions.jsonl").read_text().splitlines():
        rec = json.loads(line)
        logged[rec["id"]] = rec
    assert logged[ids[2]]["answer"] == rows[2]["answer"]  # the new gold letter is what the report scores
    assert resumed["settings"]["input_sha256"] != report["settings"]["input_sha256"]


def test_cli_export_and_errors(tmp_path, capsys):
    target = tmp_path / "obqa.csv"
    assert main(["eval", "export", "openbookqa", "--split", "validation", "--limit", "4", "--out", str(target)]) == 0
    assert len(read_mc_csv(target)) == 4
    bad = tmp_path / "bad.csv"
    bad.write_text("prompt,A,B,answer\nq,a,b,C\n")
    assert main(["eval", "mc", str(bad), "--no-retrieval", "--expert", "base", "--out", str(tmp_path / "o")]) == 2
    assert "line 2: answer 'C' is not an option column" in capsys.readouterr().err
    assert main(["eval", "mc", str(target), "--no-retrieval", "--out", str(tmp_path / "o2"), "--limit", "0"]) == 2
    assert "invalid --limit 0" in capsys.readouterr().err
    assert main(["eval", "mc", str(target), "--expert", "nobody", "--no-retrieval", "--out", str(tmp_path / "o3")]) == 2
    err = capsys.readouterr().err
    assert "unknown expert 'nobody'" in err or "registry is not available" in err
