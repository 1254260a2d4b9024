"""The multiple-choice benchmark runner behind ``asymmetry eval mc``.

Every question is planned by the engine, exactly as ``Assistant.ask`` plans a question (one request path): embedded
once in a batch (shared by the router and the retriever), routed (``auto``: the router; ``base``: the bare default
base; or a named expert), passages retrieved and packed. Then the prefix (context + question) is rendered and all
options are scored with :func:`asymmetry.eval.scoring.score_batch` (prefix once, options batched from its KV cache).
Questions are grouped by base model, experts of one base in the same batch (per-row adapters), ``batch_size`` at a
time.

Outputs in ``--out``: ``predictions.jsonl`` (one line per scored question, appended as the run goes — the resume
log), ``submission.csv`` (Kaggle ``id,prediction``), ``report.json`` (MAP@3, accuracy, per-expert and per-source
breakdown, timings, settings) and ``accuracy_by_expert.png``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from asymmetry.atomic import atomic_write_json
from asymmetry.cluster import require_ray
from asymmetry.config import Config, EvalConfig
from asymmetry.engine import AUTO, BARE, Engine, Plan, Request
from asymmetry.errors import AsymmetryError
from asymmetry.eval.distributed import map_blocks
from asymmetry.eval.mcfile import MCRow, read_mc_csv, write_submission
from asymmetry.eval.metrics import PRIMARY_METRIC, average_precision_at_k, mc_metrics
from asymmetry.eval.plot import plot_accuracy_by_expert
from asymmetry.eval.scoring import OptionScores, score_batch
from asymmetry.experts.prompts import render_prompt
from asymmetry.integrity import positive_int, read_jsonl_log, sha256_file, strict_json

log = logging.getLogger(__name__)
PREDICTIONS = "predictions.jsonl"
SETTINGS_KEYS = ("file", "input_sha256", "n_questions", "retrieval", "expert", "normalize", "cfg_scale",
                 "unconditional_prefix", "prompt_style", "prompt_template", "context_template", "option_template", "k",
                 "context_tokens", "retrieval_query", "retrieval_mode")
# Not compared on resume: more questions may be taken, and an edited input is handled row by row (row_sha256).
NOT_COMPARED = ("n_questions", "input_sha256")


@dataclass
class Prepared:
    """A question ready to score: its plan (expert, model, sources), prefix and option strings."""

    row: MCRow
    plan: Plan
    prefix: str
    unconditional: str
    options: list[str]

    @property
    def expert(self) -> str:
        return self.plan.expert.name


def _style(cfg: EvalConfig, plan: Plan) -> str:
    """``auto``: a LoRA expert is scored in its own training format (chat), a bare base with the plain templates."""
    if cfg.prompt_style == "auto":
        return "chat" if plan.expert.adapter else "plain"
    return cfg.prompt_style


def _render(cfg: EvalConfig, plan: Plan, question: str) -> tuple[str, str]:
    """``(prefix, unconditional prefix)``: the expert's chat format, or the plain templates."""
    if _style(cfg, plan) == "chat":
        spec, tokenizer = plan.expert, plan.model.tokenizer
        prefix = spec.render(tokenizer, spec.messages(question, plan.context or None))  # the expert's training format
        return prefix, render_prompt(tokenizer, [{"role": "user", "content": ""}], spec.prompt_template)
    head = cfg.context_template.format(context=plan.context) if plan.context else ""
    return head + cfg.prompt_template.format(question=question), cfg.unconditional_prefix


def _option_text(cfg: EvalConfig, plan: Plan, option: str) -> str:
    return option if _style(cfg, plan) == "chat" else cfg.option_template.format(option=option)


def _settings(cfg: EvalConfig, path: Path, n: int, retrieval: bool, expert: str, retrieval_mode: str) -> dict:
    s = asdict(cfg)
    s.update(file=str(path.resolve()), input_sha256=sha256_file(path), n_questions=n, retrieval=retrieval,
             expert=expert, retrieval_mode=retrieval_mode)
    return {k: s[k] for k in SETTINGS_KEYS}


def _damaged(pred_path: Path, lineno: int) -> AsymmetryError:
    return AsymmetryError(f"{pred_path} line {lineno} is not a prediction record: the log is damaged; use --overwrite "
                          "or a new --out")


def _load_done(pred_path: Path) -> dict[str, dict]:
    """The logged predictions by id; a half-written last line (an interruption) is cut away before appending."""
    records = read_jsonl_log(
        pred_path, lambda rec: isinstance(rec, dict) and isinstance(rec.get("id"), str)
        and isinstance(rec.get("ranked"), list), lambda lineno: _damaged(pred_path, lineno))
    return {rec["id"]: rec for rec in records}


def row_sha256(row: MCRow) -> str:
    """sha256 of what a question's scores depend on: its id, prompt, options (letter and text), answer and source."""
    key = [row.id, row.prompt, list(row.options.items()), row.answer, row.source]
    return hashlib.sha256(json.dumps(key, ensure_ascii=False).encode("utf-8")).hexdigest()


def _drop_changed(done: dict[str, dict], rows: list[MCRow], out: Path) -> None:
    """Forget the logged predictions of rows that changed since they were scored (they are scored again), saying
    which."""
    changed = [r.id for r in rows if r.id in done and done[r.id].get("row_sha256") != row_sha256(r)]
    for qid in changed:
        del done[qid]
    if changed:
        shown = ", ".join(changed[:10]) + (f" and {len(changed) - 10} more" if len(changed) > 10 else "")
        log.warning("resuming in %s: %d question(s) changed in the input since they were scored and are scored "
                    "again: %s", out, len(changed), shown)


def _request(row: MCRow, cfg: EvalConfig, retrieval: bool, expert: str) -> Request:
    query = None
    if retrieval and cfg.retrieval_query == "question+options":
        query = row.prompt + "\n" + "\n".join(row.options.values())
    return Request(question=row.prompt, expert=expert, retrieval=retrieval, decode=False, retrieval_query=query,
                   k=cfg.k, context_tokens=cfg.context_tokens)


def _prepare(engine: Engine, rows: list[MCRow], cfg: EvalConfig, retrieval: bool, expert: str,
             timings: dict[str, float]) -> list[Prepared]:
    """Plan every question through the engine (one batch for the embedder and the router) and render prompts."""
    plans = engine.plan_many([_request(r, cfg, retrieval, expert) for r in rows])
    for stage in ("embed", "route", "retrieve"):
        timings[stage] = sum(p.timings.get(stage, 0.0) for p in plans)
    prepared = []
    for row, plan in zip(rows, plans):
        prefix, uncond = _render(cfg, plan, row.prompt)
        prepared.append(Prepared(row, plan, prefix, uncond, [_option_text(cfg, plan, o) for o in row.options.values()]))
    return prepared


def _batches(items: list[Prepared], size: int) -> Iterable[list[Prepared]]:
    """Questions grouped by pooled base (experts of one base share a batch through per-row adapters)."""
    by_base: dict[int, list[Prepared]] = defaultdict(list)
    for p in items:
        by_base[id(p.plan.model.base)].append(p)
    for group in by_base.values():
        for i in range(0, len(group), size):
            yield group[i : i + size]


def _record(p: Prepared, res: OptionScores, source: str) -> dict[str, Any]:
    letters = p.row.letters
    if not all(math.isfinite(x) for x in res.scores):
        raise AsymmetryError(
            f"the option scores of question {p.row.id!r} are not finite ({res.scores}): the model produced NaN or "
            "infinite log-likelihoods; check the model's dtype and the scoring settings (cfg_scale), then --resume"
        )
    order = sorted(range(len(letters)), key=lambda j: -res.scores[j])
    return {"id": p.row.id, "ranked": [letters[j] for j in order], "answer": p.row.answer, "expert": p.expert,
            "confidence": p.plan.confidence, "source": p.row.source or source, "scores": res.scores,
            "loglik": res.loglik, "n_tokens": res.n_tokens, "loglik_plain": res.plain_loglik,
            "sources": [s.title for s in p.plan.sources], "row_sha256": row_sha256(p.row)}


def _open_run(out: Path, settings: dict, resume: bool, overwrite: bool) -> dict[str, dict]:
    """Check an earlier run in ``out`` against these settings; return the predictions it already holds."""
    pred_path, run_path = out / PREDICTIONS, out / "run.json"
    done: dict[str, dict] = {}
    if pred_path.exists() and not overwrite:
        if not resume:
            raise AsymmetryError(
                f"{out} already holds a run ({PREDICTIONS}): pass --resume to continue it, --overwrite to start over, "
                "or choose another --out"
            )
        try:
            saved = json.loads(run_path.read_text(encoding="utf-8")) if run_path.is_file() else {}
        except (OSError, ValueError):
            saved = None
        if not isinstance(saved, dict):
            raise AsymmetryError(f"cannot resume in {out}: {run_path} is damaged, so the run's settings are unknown: "
                                 "use --overwrite or another --out")
        changed = [k for k in SETTINGS_KEYS if k not in NOT_COMPARED and saved.get(k) != settings[k]]
        if changed:
            raise AsymmetryError(
                f"cannot resume in {out}: setting {changed[0]} was {saved.get(changed[0])!r}, now {settings[changed[0]]!r}"
                ": resume with the same options, or use --overwrite / another --out"
            )
        done = _load_done(pred_path)
    elif pred_path.exists():
        pred_path.unlink()
    atomic_write_json(run_path, settings)
    return done


def score_rows(engine: Engine, rows: list[MCRow], cfg: EvalConfig, retrieval: bool, expert: str, batch_size: int,
               source: str, timings: dict[str, float]) -> Iterator[list[dict[str, Any]]]:
    """Plan and score ``rows``, yielding the predictions records batch by batch (a Ray worker runs this on its block
    of questions); adds each stage's seconds to ``timings``."""
    prepared = _prepare(engine, rows, cfg, retrieval, expert, timings) if rows else []
    timings.setdefault("score", 0.0)
    for batch in _batches(prepared, batch_size):
        model = batch[0].plan.model
        names = [p.plan.model.row_name for p in batch]
        t0 = time.perf_counter()
        results = score_batch(
            model.model, model.tokenizer, [p.prefix for p in batch], [p.options for p in batch],
            normalize=cfg.normalize, cfg_scale=cfg.cfg_scale, unconditional_prefix=[p.unconditional for p in batch],
            adapter_names=names if names[0] is not None else None, lock=model.lock,
        )
        timings["score"] += time.perf_counter() - t0
        yield [_record(p, res, source) for p, res in zip(batch, results)]


def score_block(engine: Engine, rows: list[MCRow], cfg: EvalConfig, retrieval: bool, expert: str, batch_size: int,
                source: str) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """A Ray worker's share: (the records of ``rows``, the seconds per stage)."""
    timings: dict[str, float] = {}
    return [r for batch in score_rows(engine, rows, cfg, retrieval, expert, batch_size, source, timings)
            for r in batch], timings


def _write(batches: Iterable[list[dict[str, Any]]], cfg: EvalConfig, done: dict[str, dict], pred_path: Path,
           bar) -> None:
    """Append each batch of records to the predictions log (fsynced), updating the bar's running MAP@3."""
    answered = [d for d in done.values() if d.get("answer")]
    ap_sum = sum(average_precision_at_k(d["ranked"], d["answer"], cfg.top) for d in answered)
    n_ans = len(answered)
    with open(pred_path, "a", encoding="utf-8") as fh:
        for records in batches:
            for rec in records:
                fh.write(json.dumps(rec) + "\n")
                done[rec["id"]] = rec
                if rec["answer"]:
                    n_ans += 1
                    ap_sum += average_precision_at_k(rec["ranked"], rec["answer"], cfg.top)
            fh.flush()
            os.fsync(fh.fileno())
            bar.update(len(records))
            if n_ans:
                bar.set_postfix({"map@3": f"{ap_sum / n_ans:.3f}"})


def run_mc(
    path: str | os.PathLike,
    out_dir: str | os.PathLike,
    cfg: EvalConfig | None = None,
    *,
    config: Config | None = None,
    engine: Engine | None = None,
    limit: int | None = None,
    retrieval: bool | None = None,
    expert: str | None = None,
    batch_size: int | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    compare: Iterable[str | os.PathLike] = (),
    plot: bool = True,
    ray: bool = False,
    ray_workers: int | None = None,
) -> dict[str, Any]:
    """Score an MC CSV file, write submission/report/plot into ``out_dir`` and return the report dict.

    ``engine`` plans every question (pass one to share its loaded models); by default one is made from ``config``.
    ``ray``: the questions are split across ``ray_workers`` Ray actors, each holding the pipeline once
    (:mod:`asymmetry.eval.distributed`); the outputs are the same as a local run's.
    """
    if ray:
        require_ray()  # before anything is read or written: without Ray, say how to install it
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise AsymmetryError(f"--out {out} is a file: pass a folder (it is created when missing)")
    engine = engine or Engine(config)
    config = engine.config
    cfg = cfg or config.eval
    retrieval = cfg.retrieval if retrieval is None else retrieval
    expert = expert or cfg.expert
    batch_size = cfg.batch_size if batch_size is None else positive_int("batch_size", batch_size)
    if limit is not None and limit < 1:
        raise AsymmetryError(f"invalid --limit {limit}: use a positive integer")
    if expert != BARE:  # an unknown name or a bad adapter fails before anything loads (auto: every expert's)
        engine.experts.validate(None if expert == AUTO else expert)
    path = Path(path)
    rows = read_mc_csv(path)[:limit]
    out.mkdir(parents=True, exist_ok=True)
    settings = _settings(cfg, path, len(rows), retrieval, expert, config.retrieval.mode)
    done = _open_run(out, settings, resume, overwrite)
    _drop_changed(done, rows, out)

    timings: dict[str, float] = {}
    t_start = time.perf_counter()
    todo = [r for r in rows if r.id not in done]
    if ray:
        batches = map_blocks(config, score_block, todo, batch_size, (cfg, retrieval, expert, batch_size, path.stem),
                             ray_workers, timings)
    else:
        batches = score_rows(engine, todo, cfg, retrieval, expert, batch_size, path.stem, timings)
    bar = tqdm(total=len(rows), initial=len(rows) - len(todo), unit="q", desc="eval mc" + (" on Ray" if ray else ""),
               disable=not progress, dynamic_ncols=True)
    _write(batches, cfg, done, out / PREDICTIONS, bar)
    bar.close()
    timings["total"] = time.perf_counter() - t_start
    records = [done[r.id] for r in rows]
    write_submission([(r["id"], r["ranked"][: cfg.top]) for r in records], out / "submission.csv")
    report = build_report(records, settings, timings, n_scored=len(todo), top=cfg.top)
    atomic_write_json(out / "report.json", report)  # strict JSON: undefined metrics are null
    if plot:
        reports = [report] + [load_report(c) for c in compare]
        plot_accuracy_by_expert(reports, out / "accuracy_by_expert.png")
    return report


def load_report(path: str | os.PathLike) -> dict:
    """A ``report.json`` (or the folder holding one) from an earlier run."""
    p = Path(path)
    p = p / "report.json" if p.is_dir() else p
    if not p.is_file():
        raise AsymmetryError(f"no report at {p}: pass the --out folder of an earlier 'asymmetry eval mc' run")
    return json.loads(p.read_text(encoding="utf-8"))


def build_report(records: list[dict], settings: dict, timings: dict[str, float], *, n_scored: int, top: int = 3
                 ) -> dict[str, Any]:
    """Overall, per-expert and per-source metrics (``dict[str, float]`` each, primary metric ``map@3``)."""
    def metrics(recs: list[dict]) -> dict[str, float]:
        m = mc_metrics([r["ranked"] for r in recs], [r["answer"] or "" for r in recs], k=top)
        m["questions"] = float(len(recs))
        return m

    by_expert: dict[str, list[dict]] = defaultdict(list)
    by_source: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        by_expert[r["expert"]].append(r)
        by_source[r["source"]].append(r)
    overall = metrics(records)
    score_t = timings.get("score", 0.0)
    return strict_json({
        "primary_metric": PRIMARY_METRIC,
        PRIMARY_METRIC: overall.get(f"map@{top}"),
        "accuracy": overall["accuracy"],
        "questions": len(records),
        "answered": int(overall["n"]),
        "per_expert": {k: metrics(v) for k, v in sorted(by_expert.items())},
        "per_source": {k: metrics(v) for k, v in sorted(by_source.items())},
        "timings": {**timings, "scored_this_run": float(n_scored),
                    "questions_per_s": n_scored / score_t if score_t > 0 else None},
        "settings": settings,
    })
