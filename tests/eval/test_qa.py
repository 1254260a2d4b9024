"""``asymmetry eval qa`` end to end on real components: the SmolLM2 base as the one expert, the default Wikipedia
index, the HF baseline on the same pooled base; resume after an interruption; refusals."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil

import pytest

from asymmetry.cli import main
from asymmetry.config import Config, EvalConfig
from asymmetry.engine import Engine
from asymmetry.errors import AsymmetryError
from asymmetry.eval.answers import score_answer
from asymmetry.eval.baseline import closed_messages, hf_generate
from asymmetry.eval.qa import PREDICTIONS, load_predictions, open_out, run_qa
from asymmetry.experts.config import ExpertsConfig, adapters_package_dir
from asymmetry.retrieval.config import RetrievalConfig
from asymmetry.sampling.prefix import PromptCache

MAX_TOKENS = 10
QUESTIONS = [
    ("paris", "What is the capital of France?", ["Paris"]),
    ("romeo", "Who wrote the play Romeo and Juliet?", ["William Shakespeare", "Shakespeare"]),
    ("jupiter", "What is the largest planet in the Solar System?", ["Jupiter"]),
    ("moon", "when was the last time anyone was on the moon", ["December 1972", "14 December 1972 UTC"]),
    ("gold", "What is the chemical symbol for gold?", ["Au"]),
    ("mona", "Who painted the Mona Lisa?", ["Leonardo da Vinci", "Leonardo"]),
]
EXPERT = {"name": "general", "base": "smollm2", "k": 3,
          "system_prompt": "You are a helpful assistant. Use the provided passages when they are relevant."}
SYSTEMS = ["asymmetry", "hf:smollm2:passages", "hf:smollm2:closed"]


def _strict(text: str):
    def no_constant(name):
        raise AssertionError(f"{name} in strict JSON")
    return json.loads(text, parse_constant=no_constant)


@pytest.fixture(scope="module")
def qa_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("qa") / "qa.jsonl"
    path.write_text("".join(json.dumps({"id": i, "question": q, "answers": a}) + "\n" for i, q, a in QUESTIONS))
    return path


@pytest.fixture(scope="module")
def engine(pool, embedder):
    config = Config(experts=ExpertsConfig(default="general", experts=[dict(EXPERT)]),
                    retrieval=RetrievalConfig(context_tokens=256),
                    eval=EvalConfig(qa_sampler={"temperature": 0.0, "max_tokens": MAX_TOKENS}, batch_size=4))
    return Engine(config, pool=pool, embedder=embedder)


@pytest.fixture(scope="module")
def full_run(engine, qa_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "out"
    report = run_qa(qa_file, out, engine=engine, expert="general", baseline="hf", baseline_bases=["smollm2"],
                    progress=False)
    return out, report


def test_predictions_report_and_run_files(full_run, qa_file, engine):
    out, report = full_run
    lines = (out / PREDICTIONS).read_text(encoding="utf-8").splitlines()
    recs = [json.loads(line) for line in lines]
    assert [r["id"] for r in recs] == [q[0] for q in QUESTIONS]
    for rec, (_, question, answers) in zip(recs, QUESTIONS):
        assert rec["question"] == question and rec["answers"] == answers and rec["expert"] == "general"
        assert rec["answer"].strip() and 0 < rec["tokens"] <= MAX_TOKENS and rec["seconds"] > 0
        assert [s["index"] for s in rec["sources"]] == list(range(1, len(rec["sources"]) + 1)) and rec["sources"]
        recomputed = score_answer(rec["answer"], answers)
        for key in ("em", "f1", "contains", "length", "cited", "marked"):
            assert rec[key] == recomputed[key], key
        assert set(rec["baselines"]) == set(SYSTEMS[1:])
        # the passages baseline saw the plan's passages; the closed one saw none
        assert rec["baselines"]["hf:smollm2:passages"]["passages_with_answer"] == rec["passages_with_answer"]
        assert rec["baselines"]["hf:smollm2:closed"]["answer_in_passages"] is False
    assert any(r["answer_in_passages"] for r in recs), "the default index holds some of these answers"

    saved = _strict((out / "report.json").read_text())
    assert saved == report
    assert saved["primary_metric"] == "contains" and saved["questions"] == len(QUESTIONS)
    assert saved["contains"] == pytest.approx(sum(r["contains"] for r in recs) / len(recs))
    assert list(saved["systems"]) == SYSTEMS
    assert set(saved["per_expert"]) == {"general"} and set(saved["per_source"]) == {"qa"}
    assert saved["overall"]["retrieval_ceiling"] == pytest.approx(sum(r["answer_in_passages"] for r in recs) / 6)
    inside = [r for r in recs if r["answer_in_passages"]]
    marked = sum(r["marked"] for r in inside) / len(inside)
    assert saved["overall"]["marked_answer_in_passages"] == pytest.approx(marked)
    closed = saved["systems"]["hf:smollm2:closed"]["overall"]
    assert closed["retrieval_ceiling"] == 0.0 and closed["grounding"] is None
    assert all(v > 0 for v in saved["timings"]["mean_seconds_per_question"].values())
    assert saved["timings"]["answered_this_run"] == len(QUESTIONS)

    run = _strict((out / "run.json").read_text())
    assert run["input_sha256"] == hashlib.sha256(qa_file.read_bytes()).hexdigest()
    assert run["expert"] == "general" and run["retrieval"] is True and run["part"] is None
    assert run["sampler"] == {"max_tokens": MAX_TOKENS, "temperature": 0.0}
    assert run["baseline"] == "hf" and run["baseline_bases"] == ["smollm2"]
    assert (out / "qa_by_expert.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # the baseline is plain greedy generate on the bare pooled base: the same call again gives the same answer
    base = engine.pool.base("smollm2", engine.experts.placement)
    again = hf_generate(base, closed_messages(QUESTIONS[0][1]), MAX_TOKENS)
    assert again.text == recs[0]["baselines"]["hf:smollm2:closed"]["answer"]
    # ... and stays the bare base when an expert's adapter is attached to that shared base
    base.handle("science", adapters_package_dir() / "science")
    assert base.adapters and hf_generate(base, closed_messages(QUESTIONS[0][1]), MAX_TOKENS).text == again.text


def test_resume_repairs_a_half_written_line(full_run, qa_file, engine, tmp_path, caplog):
    out, report = full_run
    resumed_out = tmp_path / "out"
    shutil.copytree(out, resumed_out)
    pred = resumed_out / PREDICTIONS
    lines = pred.read_text(encoding="utf-8").splitlines()
    pred.write_text("\n".join(lines[:4]) + "\n" + lines[4][:40], encoding="utf-8")  # killed while writing line 5
    with pytest.raises(AsymmetryError, match="is not empty: pass --resume"):
        run_qa(qa_file, resumed_out, engine=engine, expert="general", baseline="hf", baseline_bases=["smollm2"],
               progress=False)
    with caplog.at_level(logging.WARNING, logger="asymmetry.eval.qa"):
        resumed = run_qa(qa_file, resumed_out, engine=engine, expert="general", baseline="hf",
                         baseline_bases=["smollm2"], resume=True, progress=False, plot=False)
    assert "half-written" in caplog.text
    assert resumed["timings"]["answered_this_run"] == 2 and resumed["questions"] == 6
    recs = [json.loads(line) for line in pred.read_text(encoding="utf-8").splitlines()]  # every line whole again
    assert [r["id"] for r in recs] == [q[0] for q in QUESTIONS]
    assert [r["answer"] for r in recs[:4]] == [json.loads(line)["answer"] for line in lines[:4]]
    assert set(resumed["systems"]) == set(report["systems"])
    # nothing left to do: a second resume answers nothing and reports the same
    again = run_qa(qa_file, resumed_out, engine=engine, expert="general", baseline="hf", baseline_bases=["smollm2"],
                   resume=True, progress=False, plot=False)
    assert again["timings"]["answered_this_run"] == 0 and again["systems"] == resumed["systems"]


def test_systems_in_turn_share_one_prompt_cache(qa_file, engine, tmp_path):
    """Two systems answering each question in turn (benchmarks/controls_pareto.py) through one PromptCache: the second
    reuses the first's prefill of the same prompt, and greedy answers stay those of a run without a cache."""
    run_qa(qa_file, tmp_path / "plain", engine=engine, expert="general", limit=3, progress=False, plot=False)
    plain = load_predictions(tmp_path / "plain" / PREDICTIONS)
    cache = PromptCache()
    for i in range(1, 4):
        for name in ("first", "second"):
            run_qa(qa_file, tmp_path / name, engine=engine, expert="general", limit=i, resume=True, progress=False,
                   plot=False, prompt_cache=cache)
    first, second = (load_predictions(tmp_path / name / PREDICTIONS) for name in ("first", "second"))
    assert list(first) == list(second) == [q[0] for q in QUESTIONS[:3]]
    for qid in first:
        assert first[qid]["answer"] == second[qid]["answer"] == plain[qid]["answer"]
        assert "reused_tokens" not in plain[qid]
        # the same prompt again: all of it but the last token comes from the cache
        assert second[qid]["reused_tokens"] > first[qid]["reused_tokens"] and second[qid]["reused_tokens"] > 100
    assert first["paris"]["reused_tokens"] == 0  # an empty cache at the start


def test_resume_refuses_a_changed_input_or_setting(full_run, qa_file, engine, tmp_path):
    out, _ = full_run
    changed = tmp_path / "qa.jsonl"
    changed.write_text(qa_file.read_text() + json.dumps({"question": "Who?", "answers": ["x"]}) + "\n")
    kwargs = {"engine": engine, "expert": "general", "baseline": "hf", "baseline_bases": ["smollm2"],
              "resume": True, "progress": False}
    with pytest.raises(AsymmetryError, match="the input changed since that run began.*--overwrite or a new --out"):
        run_qa(changed, out, **kwargs)
    with pytest.raises(AsymmetryError, match="setting sampler was .*now .*max_tokens': 11"):
        run_qa(qa_file, out, **{**kwargs, "sampler": {"max_tokens": 11}})
    with pytest.raises(AsymmetryError, match="setting baseline was .hf., now None"):
        run_qa(qa_file, out, **{**kwargs, "baseline": None, "baseline_bases": None})
    with pytest.raises(AsymmetryError, match="--resume and --overwrite contradict"):
        run_qa(qa_file, out, **{**kwargs, "overwrite": True})
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(AsymmetryError, match="is a file: pass a folder"):
        run_qa(qa_file, a_file, engine=engine, expert="general", progress=False)
    with pytest.raises(AsymmetryError, match="--part tune applies to the named sets"):
        run_qa(qa_file, tmp_path / "o", engine=engine, part="tune", progress=False)
    with pytest.raises(AsymmetryError, match="unknown expert 'nobody'"):
        run_qa(qa_file, tmp_path / "o", engine=engine, expert="nobody", progress=False)
    with pytest.raises(AsymmetryError, match="--baseline-bases needs --baseline hf"):
        run_qa(qa_file, tmp_path / "o", engine=engine, expert="general", baseline_bases=["smollm2"], progress=False)
    assert not (tmp_path / "o").exists(), "a refused run writes nothing"


def test_predictions_log_repair_rules(tmp_path):
    pred = tmp_path / PREDICTIONS
    good = [json.dumps({"id": "a", "contains": 1.0}), json.dumps({"id": "b", "contains": 0.0})]
    pred.write_text(good[0] + "\n" + good[1])  # complete last record, newline not yet written
    assert set(load_predictions(pred)) == {"a", "b"} and pred.read_text() == "\n".join(good) + "\n"
    pred.write_text(good[0] + "\n{\"id\": \"b\", \"conta\n")  # cut mid-line (its newline never came)
    assert set(load_predictions(pred)) == {"a"} and pred.read_text() == good[0] + "\n"
    pred.write_text(good[0] + "\nnot json\n" + good[1] + "\n")
    with pytest.raises(AsymmetryError, match="line 2 is not a prediction record: the log is damaged"):
        load_predictions(pred)
    # --overwrite clears an earlier run's files and starts a new run.json
    out = tmp_path / "run"
    out.mkdir()
    (out / PREDICTIONS).write_text(good[0] + "\n")
    (out / "notes.txt").write_text("mine")
    assert open_out(out, {"input_sha256": "x"}, resume=False, overwrite=True) == {}
    assert not (out / PREDICTIONS).exists() and (out / "notes.txt").exists()
    assert json.loads((out / "run.json").read_text()) == {"input_sha256": "x"}


def test_cli_table_json_and_errors(qa_file, tmp_path, capsys):
    cfg = tmp_path / "asymmetry.toml"
    cfg.write_text('[experts]\ndefault = "general"\n\n[[experts.experts]]\nname = "general"\nbase = "smollm2"\n'
                   '\n[eval]\nqa_sampler = { temperature = 0.0, max_tokens = 8 }\n')
    out = tmp_path / "cli-out"
    args = ["--config", str(cfg), "eval", "qa", str(qa_file), "--expert", "general", "--no-retrieval", "--limit", "2",
            "--out", str(out), "--no-progress", "--max-tokens", "4"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "eval qa" in printed and "asymmetry" in printed and "contains" in printed and "expert general" in printed
    saved = json.loads((out / "run.json").read_text())
    assert saved["sampler"] == {"max_tokens": 4, "temperature": 0.0} and saved["retrieval"] is False
    assert main(args + ["--resume", "--json"]) == 0
    report = _strict(capsys.readouterr().out)
    assert report["questions"] == 2 and report["timings"]["answered_this_run"] == 0
    assert all(r["tokens"] <= 4 for r in map(json.loads, (out / PREDICTIONS).read_text().splitlines()))
    assert main(args) == 2
    assert "is not empty: pass --resume" in capsys.readouterr().err
    assert main(args[:-2] + ["--max-tokens", "5", "--resume"]) == 2
    assert "setting sampler was" in capsys.readouterr().err
    assert main(["eval", "qa", str(qa_file), "--limit", "0", "--out", str(tmp_path / "x")]) == 2
    assert "invalid --limit 0" in capsys.readouterr().err
    assert main(["eval", "qa", str(qa_file), "--part", "all", "--out", str(tmp_path / "x")]) == 2
    assert "a JSONL file is read whole" in capsys.readouterr().err
    assert main(["eval", "qa", str(tmp_path / "none.jsonl"), "--out", str(tmp_path / "x")]) == 2
    assert "does not exist" in capsys.readouterr().err
