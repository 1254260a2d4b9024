"""``asymmetry eval mc|qa --ray`` on a real local Ray cluster: the questions split across two actors, each holding the
whole pipeline (router, default index, the small line-up's LoRA experts); the merged outputs equal a local run's, and
a run resumes across modes. The small line-up keeps two worker copies of the pipeline within this 2-core machine;
routing, retrieval and per-row adapters all run."""

from __future__ import annotations

import csv
import json
import sys

import pytest

from asymmetry.cli import main
from asymmetry.config import Config
from asymmetry.engine import Engine
from asymmetry.errors import AsymmetryError
from asymmetry.eval.mcfile import export_rows, read_mc_csv, write_mc_csv
from asymmetry.eval.qa import PREDICTIONS, run_qa
from asymmetry.eval.runner import run_mc

N_MC = 40
SMALL = {"experts": {"lineup": "small"}}
QUESTIONS = [
    ("paris", "What is the capital of France?", ["Paris"]),
    ("romeo", "Who wrote the play Romeo and Juliet?", ["William Shakespeare", "Shakespeare"]),
    ("jupiter", "What is the largest planet in the Solar System?", ["Jupiter"]),
    ("gold", "What is the chemical symbol for gold?", ["Au"]),
    ("mona", "Who painted the Mona Lisa?", ["Leonardo da Vinci", "Leonardo"]),
]


@pytest.fixture(scope="module")
def engine(pool, embedder):
    return Engine(Config.from_dict(SMALL), pool=pool, embedder=embedder)


@pytest.fixture(scope="module")
def arc_csv(tmp_path_factory):
    return write_mc_csv(export_rows("arc_easy", "validation", limit=N_MC), tmp_path_factory.mktemp("mc") / "arc.csv")



def _predictions(out) -> dict[str, dict]:
    return {r["id"]: r for r in map(json.loads, (out / PREDICTIONS).read_text().splitlines())}


@pytest.mark.parametrize("n", [12, pytest.param(N_MC, marks=pytest.mark.slow)])
def test_ray_mc_eval_equals_the_local_run_and_resumes_across_modes(ray_cluster, engine, arc_csv, tmp_path, n):
    arc_csv = arc_csv if n == N_MC else write_mc_csv(export_rows("arc_easy", "validation", limit=n), tmp_path / "a.csv")
    local = run_mc(arc_csv, tmp_path / "local", engine=engine, progress=False, plot=False)
    remote = run_mc(arc_csv, tmp_path / "ray", engine=engine, progress=False, plot=False, ray=True, ray_workers=2)
    assert remote["questions"] == local["questions"] == n
    for key in ("map@3", "accuracy", "answered", "per_expert", "per_source"):
        assert remote[key] == local[key], key
    pl, pr = _predictions(tmp_path / "local"), _predictions(tmp_path / "ray")
    assert set(pr) == set(pl)  # in the log, questions are grouped by base model, locally as on Ray
    for qid, rec in pl.items():
        assert (pr[qid]["ranked"], pr[qid]["expert"], pr[qid]["sources"]) == (rec["ranked"], rec["expert"], rec["sources"])
        assert pr[qid]["scores"] == pytest.approx(rec["scores"], abs=1e-4)
    assert (tmp_path / "ray" / "submission.csv").read_text() == (tmp_path / "local" / "submission.csv").read_text()
    if n == N_MC:  # 40 ARC questions reach experts on both bases (per-row adapters, two pooled bases per worker)
        assert len({r["expert"] for r in pl.values()}) >= 2, "the router should spread the questions over experts"

    # a run cut short locally (the first half) is finished on Ray, and only the rest is scored there
    part = tmp_path / "part"
    run_mc(arc_csv, part, engine=engine, limit=n // 2, progress=False, plot=False)
    resumed = run_mc(arc_csv, part, engine=engine, progress=False, plot=False, resume=True, ray=True, ray_workers=2)
    assert resumed["timings"]["scored_this_run"] == n - n // 2
    assert (resumed["map@3"], resumed["accuracy"]) == (local["map@3"], local["accuracy"])
    with open(part / "submission.csv", newline="") as fh:  # in question order, whatever order the log holds
        assert [r["id"] for r in csv.DictReader(fh)] == [r.id for r in read_mc_csv(arc_csv)]


def test_ray_qa_eval_equals_the_local_run(ray_cluster, engine, tmp_path):
    qa_file = tmp_path / "qa.jsonl"
    qa_file.write_text("".join(json.dumps({"id": i, "question": q, "answers": a}) + "\n" for i, q, a in QUESTIONS))
    greedy = {"temperature": 0.0, "max_tokens": 16}  # greedy: the same answer wherever it is decoded
    local = run_qa(qa_file, tmp_path / "local", engine=engine, sampler=greedy, progress=False, plot=False)
    remote = run_qa(qa_file, tmp_path / "ray", engine=engine, sampler=greedy, progress=False, plot=False, ray=True,
                    ray_workers=2)
    pl, pr = _predictions(tmp_path / "local"), _predictions(tmp_path / "ray")
    assert list(pr) == list(pl) == [q[0] for q in QUESTIONS]
    for qid, rec in pl.items():
        assert (pr[qid]["answer"], pr[qid]["expert"], pr[qid]["sources"]) == (rec["answer"], rec["expert"],
                                                                             rec["sources"]), qid
    def scores(report):  # every system's scores, without its wall-clock seconds
        return {name: {k: v for k, v in m.items() if k != "mean_seconds"} for name, m in report["systems"].items()}

    assert scores(remote) == scores(local)
    assert remote["primary_metric"] == local["primary_metric"]
    assert remote[remote["primary_metric"]] == local[local["primary_metric"]]


def test_ray_eval_without_ray_says_how_to_install_it(monkeypatch, arc_csv, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError, as when the extra is missing
    with pytest.raises(AsymmetryError, match=r"pip install -e '\.\[ray\]'"):
        run_mc(arc_csv, tmp_path / "out", config=Config.from_dict(SMALL), ray=True, progress=False)
    assert not (tmp_path / "out").exists()
    rc = main(["eval", "qa", "nq_open", "--limit", "2", "--out", str(tmp_path / "qa"), "--ray"])
    err = capsys.readouterr().err
    assert rc != 0 and "pip install -e '.[ray]'" in err and "Traceback" not in err
    assert not (tmp_path / "qa").exists()
