"""The open-domain QA runner behind ``asymmetry eval qa``: free-form answers scored against gold aliases.

Input: a named set (``nq_open``, ``triviaqa``/``trivia_qa``, ``squad``; by default its held-out part, see
:mod:`asymmetry.datasets` for the fixed hash rule, in hash order) or a JSONL file of ``{"id"?, "question", "answers"}``
lines (in file order). ``limit`` takes the first N of that order.

Every question becomes one :class:`~asymmetry.engine.Request` (the one request path: embedded once, routed, passages
retrieved and packed, decoded by our sampler with ``[eval] qa_sampler`` and the command's sampler flags over the
config and the expert's defaults). Questions are planned ``batch_size`` at a time (one embedder and router batch) and
decoded one by one. The reply is scored by :mod:`asymmetry.eval.answers` against the passages its prompt held.
``baseline="hf"`` adds plain transformers greedy ``generate`` on bare bases (:mod:`asymmetry.eval.baseline`) on the
same questions: with the plan's passages and closed-book.

Outputs in ``out``:

- ``run.json`` (written first, atomically): the input's sha256 (the file's bytes, or the named part's rows) and the
  settings; ``resume`` refuses when either changed.
- ``predictions.jsonl``: one line per answered question (our answer and scores, the baselines' under
  ``"baselines"``), appended, flushed and fsynced per line: the resume log. A half-written last line (an
  interruption) is cut away atomically before a resumed run appends.
- ``report.json`` (atomic, strict JSON: undefined values are null): primary ``contains``, metrics overall, per expert
  and per source for every system, mean seconds per question, settings; ``qa_by_expert.png``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from asymmetry.atomic import atomic_write_json
from asymmetry.cluster import require_ray
from asymmetry.config import Config, EvalConfig
from asymmetry.datasets import QA_DATASETS, QAItem, is_named_qa_set, load_qa
from asymmetry.engine import AUTO, BARE, Answer, Engine, Plan, Request, sampler_with
from asymmetry.errors import AsymmetryError
from asymmetry.eval.answers import PRIMARY_METRIC, qa_metrics, score_answer
from asymmetry.eval.baseline import VARIANTS, closed_messages, hf_generate, passages_messages, system_name
from asymmetry.eval.distributed import map_blocks
from asymmetry.eval.plot import plot_qa_by_expert
from asymmetry.experts import PooledBase
from asymmetry.integrity import read_jsonl_log
from asymmetry.sampling.prefix import PromptCache

log = logging.getLogger(__name__)

PREDICTIONS = "predictions.jsonl"
RUN_FILE = "run.json"
REPORT = "report.json"
PLOT = "qa_by_expert.png"
OUTPUTS = (PREDICTIONS, RUN_FILE, REPORT, PLOT)
OURS = "asymmetry"
BASELINES = ("hf",)
RUN_VERSION = 1
NOT_COMPARED = ("n_questions", "input")  # a resumed run may take more questions, or find its file moved
SCORE_KEYS = ("em", "f1", "contains", "length", "cited", "citation_valid", "answer_in_passages",
              "passages_with_answer", "grounded")


# -- input ------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class QAInput:
    label: str  # the set's name, or the file's resolved path
    part: str | None  # None for a file (read whole)
    items: list[QAItem]
    sha256: str


def rows_sha256(items: Iterable[QAItem]) -> str:
    """sha256 of the ``(id, question, answers)`` rows, as compact JSON, in order."""
    h = hashlib.sha256()
    for it in items:
        h.update(json.dumps([it.id, it.question, list(it.answers)], ensure_ascii=False).encode("utf-8") + b"\n")
    return h.hexdigest()


def open_input(name_or_path: str | os.PathLike, part: str | None = None) -> QAInput:
    """The questions and the content hash of a named set's part (default ``heldout``) or of a JSONL file."""
    if is_named_qa_set(name_or_path):
        part = part or "heldout"
        items = load_qa(name_or_path, part)
        return QAInput(QA_DATASETS[str(name_or_path)], part, items, rows_sha256(items))
    if part is not None:
        raise AsymmetryError(f"--part {part} applies to the named sets ({', '.join(QA_DATASETS)}); a JSONL file is "
                             "read whole: drop --part")
    path = Path(name_or_path)
    items = load_qa(path)
    return QAInput(str(path.resolve()), None, items, hashlib.sha256(path.read_bytes()).hexdigest())


# -- the output folder: run.json and the resume log --------------------------------------------------------------------


def _damaged(pred: Path, lineno: int) -> AsymmetryError:
    return AsymmetryError(f"{pred} line {lineno} is not a prediction record: the log is damaged; use --overwrite or "
                          "a new --out")


def load_predictions(pred: Path) -> dict[str, dict]:
    """The records of a predictions log, by id. A half-written last line is cut away atomically (the good prefix is
    written to a temp file and renamed over the log), with a warning; a damaged line before the last is an error."""
    records = read_jsonl_log(pred, lambda rec: isinstance(rec, dict) and isinstance(rec.get("id"), str),
                             lambda lineno: _damaged(pred, lineno))
    return {rec["id"]: rec for rec in records}


def _read_run(out: Path) -> dict:
    path = out / RUN_FILE
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise AsymmetryError(f"cannot resume in {out}: {path} is missing or unreadable, so the run's settings are "
                             "unknown: use --overwrite or a new --out") from None
    if not isinstance(saved, dict):
        raise AsymmetryError(f"cannot resume in {out}: {path} is not a settings object: use --overwrite or a new --out")
    return saved


def _changed_rows(out: Path, items: Sequence[QAItem]) -> str:
    """Which logged questions differ from the input now (id, question or gold answers), for the refusal."""
    try:
        logged = load_predictions(out / PREDICTIONS)
    except AsymmetryError:
        return ""
    changed = [it.id for it in items if it.id in logged and (logged[it.id].get("question"), logged[it.id].get(
        "answers")) != (it.question, list(it.answers))]
    if not changed:
        return ""
    more = f" and {len(changed) - 10} more" if len(changed) > 10 else ""
    return f"; changed questions: {', '.join(changed[:10])}{more}"


def _check_resume(out: Path, settings: dict, items: Sequence[QAItem] = ()) -> None:
    saved = _read_run(out)
    if saved.get("input_sha256") != settings["input_sha256"]:
        raise AsymmetryError(
            f"cannot resume in {out}: the input changed since that run began (sha256 "
            f"{str(saved.get('input_sha256'))[:12]}..., now {settings['input_sha256'][:12]}...)"
            f"{_changed_rows(out, items)}: resume with the same input, or use --overwrite or a new --out"
        )
    for key, value in settings.items():
        if key not in NOT_COMPARED and saved.get(key) != value:
            raise AsymmetryError(
                f"cannot resume in {out}: setting {key} was {saved.get(key)!r}, now {value!r}: resume with "
                "the same options, or use --overwrite or a new --out"
            )


def open_out(out: Path, settings: dict, *, resume: bool, overwrite: bool, items: Sequence[QAItem] = ()
             ) -> dict[str, dict]:
    """Check ``out`` against this run; return the records an earlier run already logged; write ``run.json``."""
    if resume and overwrite:
        raise AsymmetryError("--resume and --overwrite contradict each other: pass one of them")
    if out.exists() and not out.is_dir():
        raise AsymmetryError(f"--out {out} is a file: pass a folder (it is created when missing)")
    nonempty = out.is_dir() and any(out.iterdir())
    done: dict[str, dict] = {}
    if nonempty and not (resume or overwrite):
        raise AsymmetryError(f"--out {out} is not empty: pass --resume to continue the run in it, --overwrite to "
                             "start over, or choose another --out")
    if overwrite:
        for name in OUTPUTS:
            (out / name).unlink(missing_ok=True)
    elif resume and (out / PREDICTIONS).exists():
        _check_resume(out, settings, items)
        done = load_predictions(out / PREDICTIONS)
    elif resume:
        log.info("nothing to resume in %s: starting a new run", out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / RUN_FILE, settings)
    return done


# -- answering ---------------------------------------------------------------------------------------------------------


def _sources(answer: Answer) -> list[dict[str, Any]]:
    return [{"index": i, "title": s.title, "score": round(float(s.score), 4)} for i, s in enumerate(answer.sources, 1)]


def _baselines(item: QAItem, plan: Plan, bases: Mapping[str, PooledBase], variants: Sequence[str],
               passage_texts: list[str]) -> dict[str, dict]:
    """Every baseline system's answer and scores for one question."""
    out: dict[str, dict] = {}
    max_new = plan.sampler.max_tokens
    pairs = [(p.title, p.text) for p in plan.passages]
    for name, base in bases.items():
        closed = hf_generate(base, closed_messages(item.question), max_new)
        got = {"closed": (closed, [])}
        if "passages" in variants:
            got["passages"] = (hf_generate(base, passages_messages(item.question, pairs), max_new), passage_texts) \
                if pairs else (closed, [])
        for variant in variants:
            ans, texts = got[variant]
            out[system_name(name, variant)] = {"answer": ans.text, **score_answer(ans.text, item.answers, texts),
                                               "seconds": round(ans.seconds, 4), "tokens": ans.completion_tokens}
    return out


def answer_record(engine: Engine, plan: Plan, item: QAItem, bases: Mapping[str, PooledBase],
                  variants: Sequence[str], prompt_cache: PromptCache | None = None) -> dict[str, Any]:
    """Decode one planned question (and its baselines); the predictions line. With ``prompt_cache`` the decode
    starts from the KV of the prefix its prompt shares with the cache's last sequence, and the line also records
    ``prefill_s``, ``reused_tokens`` and the answer's ``timings`` (per stage)."""
    stream = engine.stream(plan, prompt_cache=prompt_cache)
    stream.text()
    answer = stream.answer
    passage_texts = [f"{p.title}\n{p.text}" for p in plan.passages]  # what the prompt showed, numbered from 1
    rec: dict[str, Any] = {
        "id": item.id, "question": item.question, "answers": list(item.answers), "source": item.source,
        "answer": answer.text, "expert": answer.expert, "confidence": None if answer.confidence is None else float(answer.confidence),
        "sources": _sources(answer),
        "controls": [s["control"] for s in answer.stats.get("segments") or () if s["control"] is not None],
        **score_answer(answer.text, item.answers, passage_texts),
        "seconds": answer.timings.get("total"), "tokens": answer.stats.get("completion_tokens"),
    }
    if prompt_cache is not None:
        rec.update(prefill_s=answer.stats.get("prefill_s"), reused_tokens=answer.stats.get("reused_tokens"),
                   timings=answer.timings)
    if bases:
        rec["baselines"] = _baselines(item, plan, bases, variants, passage_texts)
    return rec


# -- the report --------------------------------------------------------------------------------------------------------


def _system_scores(rec: dict, system: str) -> dict:
    return rec if system == OURS else rec["baselines"][system]


def _mean_seconds(recs: list[dict], system: str) -> float | None:
    values = [_system_scores(r, system).get("seconds") for r in recs]
    values = [v for v in values if isinstance(v, (int, float))]
    return round(sum(values) / len(values), 4) if values else None


def _system_report(records: list[dict], system: str) -> dict[str, Any]:
    by_expert: dict[str, list[dict]] = defaultdict(list)
    by_source: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        by_expert[r["expert"]].append(r)
        by_source[r["source"]].append(r)

    def metrics(recs: list[dict]) -> dict[str, float | None]:
        return qa_metrics([_system_scores(r, system) for r in recs])

    return {
        "overall": metrics(records),
        "per_expert": {k: metrics(v) for k, v in sorted(by_expert.items())},  # by the expert our pipeline routed to
        "per_source": {k: metrics(v) for k, v in sorted(by_source.items())},
        "mean_seconds": _mean_seconds(records, system),
    }


def build_report(records: list[dict], settings: dict, systems: Sequence[str], timings: dict[str, float]
                 ) -> dict[str, Any]:
    """Metrics of every system (``dict[str, float]`` each, primary ``contains``), ours also at the top level."""
    reports = {s: _system_report(records, s) for s in systems}
    ours = reports[OURS]
    return {
        "primary_metric": PRIMARY_METRIC,
        PRIMARY_METRIC: ours["overall"][PRIMARY_METRIC],
        "em": ours["overall"]["em"],
        "f1": ours["overall"]["f1"],
        "questions": len(records),
        "overall": ours["overall"],
        "per_expert": ours["per_expert"],
        "per_source": ours["per_source"],
        "systems": reports,
        "timings": {"mean_seconds_per_question": {s: r["mean_seconds"] for s, r in reports.items()}, **timings},
        "settings": settings,
    }


def load_report(path: str | os.PathLike) -> dict:
    """A ``report.json`` (or the folder holding one) of an earlier ``eval qa`` run."""
    p = Path(path)
    p = p / REPORT if p.is_dir() else p
    if not p.is_file():
        raise AsymmetryError(f"no report at {p}: pass the --out folder of an earlier 'asymmetry eval qa' run")
    return json.loads(p.read_text(encoding="utf-8"))


# -- the run -----------------------------------------------------------------------------------------------------------


def _settings(engine: Engine, qa: QAInput, n: int, expert: str, retrieval: bool, sampler: dict,
              baseline: str | None, bases: list[str]) -> dict[str, Any]:
    config = engine.config
    return {
        "version": RUN_VERSION, "input": qa.label, "part": qa.part, "input_sha256": qa.sha256, "n_questions": n,
        "expert": expert, "retrieval": retrieval, "retrieval_config": dataclasses.asdict(config.retrieval),
        "index": {"index_dir": config.index.index_dir, "corpus": config.index.corpus,
                  "embedding_model": config.index.embedding_model},
        "context_tokens": config.assistant.context_tokens, "mixture": config.assistant.mixture,
        "sampler": dict(sorted(sampler.items())), "sampler_config": dataclasses.asdict(config.sampler),
        "baseline": baseline, "baseline_bases": bases,
        "experts": [{"name": e.name, "base": e.base, "adapter": e.adapter, "sampler": e.sampler,
                     "system_prompt": e.system_prompt, "k": e.k, "retrieval": e.retrieval} for e in engine.experts],
    }


def _baseline_names(engine: Engine, baseline: str | None, names: Sequence[str] | None) -> list[str]:
    """The names of the bare bases the baseline runs on (checked, not loaded)."""
    if baseline is None:
        if names:
            raise AsymmetryError("--baseline-bases needs --baseline hf: add it, or drop --baseline-bases")
        return []
    if baseline not in BASELINES:
        raise AsymmetryError(f"unknown baseline {baseline!r}: use one of {', '.join(BASELINES)}")
    if names is not None and not [n for n in names if n]:
        raise AsymmetryError("--baseline-bases is empty: name bases, e.g. smollm2,qwen2.5-coder-1.5b")
    return list(dict.fromkeys(n for n in names if n)) if names is not None else \
        list(dict.fromkeys(e.base for e in engine.experts))


def load_bases(engine: Engine, names: Sequence[str]) -> dict[str, PooledBase]:
    """The pooled bare bases ``names`` (loaded now, through the engine's pool: no second copy)."""
    return {name: engine.pool.base(name, engine.experts.placement) for name in names}


def answer_items(engine: Engine, items: Sequence[QAItem], expert: str, retrieval: bool, overrides: Mapping[str, Any],
                 bases: Mapping[str, PooledBase], variants: Sequence[str], plan_batch: int,
                 prompt_cache: PromptCache | None = None) -> Iterator[list[dict]]:
    """Plan ``items`` ``plan_batch`` at a time and answer them one by one, yielding each question's record (in a
    list: a Ray worker runs this on its block of questions)."""
    for i in range(0, len(items), plan_batch):
        chunk = items[i : i + plan_batch]
        plans = engine.plan_many([Request(question=it.question, expert=expert, retrieval=retrieval,
                                          sampler=dict(overrides)) for it in chunk])
        for item, plan in zip(chunk, plans):
            yield [answer_record(engine, plan, item, bases, variants, prompt_cache)]


def answer_block(engine: Engine, items: list[QAItem], expert: str, retrieval: bool, overrides: dict[str, Any],
                 base_names: list[str], variants: Sequence[str], plan_batch: int) -> tuple[list[dict], dict[str, float]]:
    """A Ray worker's share: (the records of ``items``, no stage timings)."""
    bases = load_bases(engine, base_names)
    return [r for batch in answer_items(engine, items, expert, retrieval, overrides, bases, variants, plan_batch)
            for r in batch], {}


def run_qa(
    source: str | os.PathLike,
    out_dir: str | os.PathLike,
    cfg: EvalConfig | None = None,
    *,
    config: Config | None = None,
    engine: Engine | None = None,
    part: str | None = None,
    limit: int | None = None,
    retrieval: bool | None = None,
    expert: str | None = None,
    sampler: Mapping[str, Any] | None = None,
    baseline: str | None = None,
    baseline_bases: Sequence[str] | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    plot: bool = True,
    ray: bool = False,
    ray_workers: int | None = None,
    prompt_cache: PromptCache | None = None,
) -> dict[str, Any]:
    """Answer and score a QA set, write the outputs into ``out_dir`` and return the report dict.

    ``ray``: the questions are split across ``ray_workers`` Ray actors, each holding the pipeline once
    (:mod:`asymmetry.eval.distributed`); the outputs are the same as a local run's.

    ``sampler``: sampler fields over ``[eval] qa_sampler`` (which sets them over the config and each expert's
    defaults). ``engine`` plans and decodes (pass one to share its loaded models); by default one is made from
    ``config``.

    ``prompt_cache`` (local runs): a :class:`~asymmetry.sampling.prefix.PromptCache` kept across calls, so several
    systems answering the same question in turn (``benchmarks/controls_pareto.py``) prefill its prompt once; each
    predictions line then also records ``prefill_s``, ``reused_tokens`` and the answer's ``timings``.
    """
    if ray:
        require_ray()  # before anything is read or written: without Ray, say how to install it
    engine = engine or Engine(config)
    cfg = cfg or engine.config.eval
    retrieval = cfg.retrieval if retrieval is None else bool(retrieval)
    expert = expert or cfg.expert
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise AsymmetryError(f"invalid --limit {limit}: use a positive integer")
    if expert != BARE:  # an unknown name or a bad adapter fails before anything loads (auto: every expert's)
        engine.experts.validate(None if expert == AUTO else expert)
    overrides = {**cfg.qa_sampler, **dict(sampler or {})}
    sampler_with(engine.config.sampler, overrides)  # invalid fields fail now, not at the first question
    qa = open_input(source, part)
    items = qa.items[:limit]
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise AsymmetryError(f"--out {out} is a file: pass a folder (it is created when missing)")
    bases = _baseline_names(engine, baseline, baseline_bases)
    variants = VARIANTS if retrieval else ("closed",)
    systems = [OURS] + [system_name(b, v) for b in bases for v in variants]
    settings = _settings(engine, qa, len(items), expert, retrieval, overrides, baseline, list(bases))
    done = open_out(out, settings, resume=resume, overwrite=overwrite, items=items)

    t_start = time.perf_counter()
    todo = [it for it in items if it.id not in done]
    answered = len(items) - len(todo)
    right = sum(done[it.id]["contains"] for it in items if it.id in done)
    if ray:
        batches = map_blocks(engine.config, answer_block, todo, cfg.batch_size,
                             (expert, retrieval, dict(overrides), list(bases), variants, cfg.batch_size), ray_workers, {})
    else:
        batches = answer_items(engine, todo, expert, retrieval, overrides, load_bases(engine, bases), variants,
                               cfg.batch_size, prompt_cache)
    bar = tqdm(total=len(items), initial=len(items) - len(todo), unit="q", desc="eval qa" + (" on Ray" if ray else ""),
               disable=not progress, dynamic_ncols=True)
    with open(out / PREDICTIONS, "a", encoding="utf-8") as fh:
        for records in batches:
            for rec in records:
                fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
                done[rec["id"]] = rec
                answered += 1
                right += rec["contains"]
            fh.flush()
            os.fsync(fh.fileno())
            bar.update(len(records))
            bar.set_postfix({PRIMARY_METRIC: f"{right / answered:.3f}"})
    bar.close()
    timings = {"answered_this_run": float(len(todo)), "seconds_this_run": round(time.perf_counter() - t_start, 3)}
    records = [done[it.id] for it in items]
    report = build_report(records, settings, systems, timings)
    atomic_write_json(out / REPORT, report)
    if plot:
        plot_qa_by_expert(report, out / PLOT)
    return report
