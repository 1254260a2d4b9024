"""The command line under bad input: one line, exit 2, the fix, before any model loads; and the last line of
defence for anything unexpected (one line naming the command and the logged traceback, exit 1)."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest

from asymmetry.cli import index as index_cli
from asymmetry.errors import AsymmetryError
from asymmetry.sampling.config import SamplerConfig
from asymmetry.sampling.grammar import read_constraint

from .conftest import run_cli

MC = "prompt,A,B,C,answer\nWhat is 2+2?,3,4,5,B\nWhat is frozen water?,ice,steam,fire,A\n"


@pytest.fixture
def mc_csv(tmp_path) -> Path:
    path = tmp_path / "q.csv"
    path.write_text(MC)
    return path


@pytest.mark.parametrize("flag", [["--cfg-scale", "nan"], ["--cfg-scale", "inf"], ["--cfg-scale", "-1"],
                                  ["--batch-size", "0"], ["--k", "0"]])
def test_eval_mc_flags_are_validated_like_the_toml_keys(flag, mc_csv, tmp_path, capsys):
    out = tmp_path / "out"
    code, _, err = run_cli(["eval", "mc", str(mc_csv), "--no-retrieval", "--out", str(out), *flag], capsys)
    key = flag[0][2:].replace("-", "_")
    assert code == 2 and err.startswith(f"error: invalid {flag[0]} (eval.{key})=") and err.count("\n") == 1
    assert not out.exists()
    toml = tmp_path / "c.toml"
    toml.write_text(f"[eval]\n{key} = {flag[1]}\n")
    code, _, err = run_cli(["--config", str(toml), "eval", "mc", str(mc_csv), "--out", str(out)], capsys)
    assert code == 2 and f"invalid eval.{key}=" in err and not out.exists()


@pytest.mark.parametrize("toml", ["[sampler]\ntemperature = nan", "[sampler]\ntop_p = inf",
                                  "[eval]\nqa_sampler = { temperature = -inf }", "[assistant]\nmixture_margin = nan",
                                  "[router]\nthreshold = nan", "[retrieval]\ndedup_threshold = nan",
                                  "[retrieval]\nrerank_min_score = -inf", "[index]\nshard_size = -5"])
def test_non_finite_and_out_of_range_settings_are_rejected_everywhere(toml, tmp_path, capsys):
    path = tmp_path / "c.toml"
    path.write_text(toml + "\n")
    code, _, err = run_cli(["--config", str(path), "expert", "list"], capsys)
    assert code == 2 and err.startswith("error: invalid ") and err.count("\n") == 1


@pytest.mark.parametrize("flag", [["--temperature", "nan"], ["--top-p", "inf"], ["--tau", "nan"]])
def test_sampler_flags_reject_non_finite_values(flag, capsys):
    code, _, err = run_cli(["generate", "hello", *flag], capsys)
    assert code == 2 and "finite" in err and err.count("\n") == 1


def test_an_out_that_is_a_file_is_refused_before_any_work(mc_csv, tmp_path, capsys):
    out = tmp_path / "taken"
    out.write_text("mine")
    code, _, err = run_cli(["eval", "mc", str(mc_csv), "--no-retrieval", "--out", str(out)], capsys)
    assert code == 2 and f"--out {out} is a file" in err and out.read_text() == "mine"


def test_a_non_utf8_grammar_file_is_a_clear_error(tmp_path):
    grammar = tmp_path / "g.gbnf"
    grammar.write_bytes('root ::= "caf\u00e9"\n'.encode("latin-1"))
    with pytest.raises(AsymmetryError, match="grammar file .* is not UTF-8 \\(invalid byte 0xe9 on line 1\\).*iconv"):
        read_constraint(SamplerConfig(grammar_file=str(grammar)))


def test_an_unexpected_error_is_one_line_naming_the_command_and_the_log(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("ASYMMETRY_HOME", str(tmp_path / "home"))

    def broken(args):
        return {}["missing"]

    monkeypatch.setattr(index_cli, "_info", broken)
    code, _, err = run_cli(["index", "info"], capsys)
    assert code == 1 and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("error: asymmetry index info failed unexpectedly: KeyError: 'missing' (full traceback in ")
    logs = list((tmp_path / "home" / "logs").glob("asymmetry-*.log"))
    assert len(logs) == 1 and str(logs[0]) in err
    text = logs[0].read_text()
    assert "Traceback (most recent call last)" in text and "def broken" not in text and "KeyError" in text


def test_a_full_disk_outside_an_atomic_write_is_still_a_clear_error(monkeypatch, tmp_path, capsys):
    def full(args):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "x.bin"))

    monkeypatch.setattr(index_cli, "_info", full)
    code, _, err = run_cli(["index", "info"], capsys)
    assert code == 2 and f"cannot write {tmp_path / 'x.bin'}: the disk is full (" in err and "MB free" in err


def test_json_output_is_strict(mc_csv, tmp_path):
    from asymmetry.eval.runner import build_report

    report = build_report([{"id": "0", "ranked": ["A", "B"], "answer": None, "expert": "e", "source": "s"}], {},
                          {"score": 0.0}, n_scored=0)
    assert report["map@3"] is None and report["timings"]["questions_per_s"] is None
    json.dumps(report, allow_nan=False)


def test_unknown_experts_and_missing_adapters_fail_before_any_model_loads(tmp_path, monkeypatch, capsys):
    from asymmetry.embedder import Embedder
    from asymmetry.experts import registry

    monkeypatch.setattr(registry, "resolve_model", lambda *a, **k: pytest.fail("a base model was resolved"))
    monkeypatch.setattr(Embedder, "encode", lambda *a, **k: pytest.fail("the embedder ran"))
    toml = tmp_path / "c.toml"
    toml.write_text(f'[experts]\ndefault = "general"\n[[experts.experts]]\nname = "general"\n'
                    f'[[experts.experts]]\nname = "law"\nadapter = "{tmp_path / "gone"}"\n')
    code, _, err = run_cli(["--config", str(toml), "ask", "--expert", "law", "--json", "Is this legal?"], capsys)
    assert code == 2 and "adapter of expert 'law' not found" in err
    code, _, err = run_cli(["--config", str(toml), "ask", "--expert", "nobody", "Is this legal?"], capsys)
    assert code == 2 and "unknown expert 'nobody'" in err


def test_ask_json_interrupted_keeps_the_partial_answer(monkeypatch, capsys):
    from asymmetry import commands
    from asymmetry.engine import Answer

    class Stream:
        answer = None

        def __iter__(self):
            yield "The answer"
            self.answer = Answer(text="The answer", expert="general", confidence=0.9, interrupted=True)
            raise KeyboardInterrupt

    class Bot:
        class experts:  # stands in for the registry
            @staticmethod
            def validate(name=None):
                return None

        def stream(self, question, **kwargs):
            return Stream()

    monkeypatch.setattr(commands.Assistant, "load", classmethod(lambda cls, cfg=None, **kw: Bot()))
    code, out, _ = run_cli(["ask", "--json", "What?"], capsys)
    assert code == 130
    data = json.loads(out)
    assert data["answer"] == "The answer" and data["interrupted"] is True


@pytest.mark.parametrize("table", ["{ temperature = nan }", "{ top_p = inf }", "{ temprature = 0.5 }"])
def test_an_experts_sampler_table_is_validated_like_sampler(table, tmp_path, capsys):
    toml = tmp_path / "c.toml"
    toml.write_text(f'[experts]\ndefault = "x"\n[[experts.experts]]\nname = "x"\nsampler = {table}\n')
    code, _, err = run_cli(["--config", str(toml), "expert", "list"], capsys)
    assert code == 2 and "invalid experts.experts['x'].sampler." in err


@pytest.mark.parametrize("flag", [["--lr", "nan"], ["--lr", "inf"], ["--dropout", "nan"], ["--rank", "0"]])
def test_expert_train_flags_reject_non_finite_values(flag, tmp_path, capsys):
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]})
                    + "\n")
    code, _, err = run_cli(["expert", "train", "x", "--data", str(data), "--out", str(tmp_path / "a"), *flag], capsys)
    assert code == 2 and f"invalid {flag[0][2:]}=" in err and err.count("\n") == 1
    assert not (tmp_path / "a").exists()


def test_router_train_settings_reject_non_finite_values():
    from asymmetry.router.model import RouterTrainSettings

    for kwargs in ({"lr": float("nan")}, {"weight_decay": float("inf")}, {"epochs": 0}):
        with pytest.raises(AsymmetryError, match="invalid "):
            RouterTrainSettings(**kwargs)


@pytest.mark.parametrize(("argv", "name", "text"), [
    (["router", "train", "--data"], "r.jsonl", '{"question": "caf\u00e9?", "expert": "science"}\n'),
    (["expert", "train", "x", "--data"], "t.jsonl", '{"prompt": "caf\u00e9?", "completion": "yes"}\n'),
    (["expert", "train", "x", "--data"], "t.csv", "prompt,A,B,answer\ncaf\u00e9?,a,b,A\n"),
    (["eval", "mc", "--no-retrieval"], "q.csv", "prompt,A,B,answer\ncaf\u00e9?,a,b,A\n"),
    (["index", "build", "--corpus"], "c.jsonl", '{"title": "Caf\u00e9", "text": "words"}\n'),
])
def test_every_reader_names_a_non_utf8_file(argv, name, text, tmp_path, capsys):
    path = tmp_path / name
    path.write_bytes(text.encode("latin-1"))
    extra = {"router": ["--out", str(tmp_path / "r.json")], "expert": ["--out", str(tmp_path / "a")],
             "eval": ["--out", str(tmp_path / "o")], "index": ["--index-dir", str(tmp_path / "i"), "--no-progress"]}
    args = [*argv, str(path), *extra[argv[0]]] if argv[0] != "eval" else [*argv[:2], str(path), *argv[2:],
                                                                          *extra["eval"]]
    code, _, err = run_cli(args, capsys)
    assert code == 2 and "is not UTF-8 (invalid byte 0xe9" in err and "iconv" in err, err


@pytest.mark.parametrize("damage", ["run.json", "middle-line"])
def test_a_damaged_eval_run_is_refused_on_resume_before_any_model_loads(damage, mc_csv, tmp_path, monkeypatch,
                                                                        capsys):
    from asymmetry.config import Config, EvalConfig
    from asymmetry.eval.runner import _settings
    from asymmetry.experts import registry

    monkeypatch.setattr(registry, "resolve_model", lambda *a, **k: pytest.fail("a base model was resolved"))
    out = tmp_path / "out"
    out.mkdir()
    rec = json.dumps({"id": "0", "ranked": ["B", "A", "C"]})
    if damage == "run.json":
        (out / "predictions.jsonl").write_text(rec + "\n")
        (out / "run.json").write_text('{"file": ')
        expected = "run.json is damaged"
    else:
        (out / "predictions.jsonl").write_text(rec + "\n\x00\x00 torn\n" + rec + "\n")
        (out / "run.json").write_text(json.dumps(_settings(EvalConfig(), mc_csv, 2, False, "base",
                                                           Config().retrieval.mode)))
        expected = "predictions.jsonl line 2 is not a prediction record: the log is damaged"
    argv = ["eval", "mc", str(mc_csv), "--no-retrieval", "--expert", "base", "--out", str(out), "--resume"]
    code, _, err = run_cli(argv, capsys)
    assert code == 2 and expected in err and "--overwrite" in err, err


@pytest.mark.parametrize(("toml", "fix"), [("[eval]\nprompt_template = 5", "use a string"),
                                           ("[index]\nchunk_target_words = \"many\"", "use an integer"),
                                           ("[router]\nthreshold = true", "use a number"),
                                           ("[retrieval]\nrerank = 1", "use true or false"),
                                           ("index = 3", "use a table of IndexConfig keys")])
def test_a_wrongly_typed_toml_key_names_its_type(toml, fix, tmp_path, capsys):
    path = tmp_path / "c.toml"
    path.write_text(toml + "\n")
    code, _, err = run_cli(["--config", str(path), "expert", "list"], capsys)
    assert code == 2 and err.startswith("error: invalid ") and fix in err, err
