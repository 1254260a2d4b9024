"""The multiple-choice benchmark runner behind ``asymmetry eval mc``.

For every question: embed it once (shared by the router and the retriever), pick the expert (``auto``: the router;
``base``: the bare default base; or a named expert), retrieve and pack passages, build the prefix (context +
question) and score all options with :func:`asymmetry.eval.scoring.score_batch` (prefix once, options batched from
its KV cache). Questions are grouped by expert and scored ``batch_size`` at a time.

Outputs in ``--out``: ``predictions.jsonl`` (one line per scored question, appended as the run goes — the resume
log), ``submission.csv`` (Kaggle ``id,prediction``), ``report.json`` (MAP@3, accuracy, per-expert and per-source
breakdown, timings, settings) and ``accuracy_by_expert.png``.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from asymmetry.eval.config import EvalConfig
from asymmetry.eval.mcfile import MCRow, atomic_write_text, read_mc_csv, write_submission
from asymmetry.eval.metrics import PRIMARY_METRIC, average_precision_at_k, mc_metrics

from asymmetry.errors import AsymmetryError

log = logging.getLogger(__name__)

BASE = "base"  # the bare default base model, no adapter
PREDICTIONS = "predictions.jsonl"
SETTINGS_KEYS = ("file", "n_questions", "retrieval", "expert", "normalize", "cfg_scale", "unconditional_prefix",
                 "prompt_style", "prompt_template", "context_template", "option_template", "k", "context_tokens",
                 "retrieval_query", "retrieval_mode")


@dataclass
class Prepared:
    """A question ready to score: its expert, prefix and option strings."""

    row: MCRow
    expert: str
    prefix: str
    unconditional: str
    options: list[str]
    confidence: float | None = None
    sources: list[str] = field(default_factory=list)


_REGISTRIES: dict[str, Any] = {}  # one registry per experts config per process: adapters wrap the shared base once


class ModelSource:
    """Gives ``(model, tokenizer, spec)`` for an expert name; imports the experts package only when needed."""

    def __init__(self, config: Any = None):
        self.config = config

    @property
    def _registry(self):
        return _REGISTRIES.get(repr(self.config.experts))

    @property
    def registry(self):
        key = repr(self.config.experts)
        if key not in _REGISTRIES:
            try:
                from asymmetry.experts import ExpertRegistry
            except ImportError as exc:
                raise AsymmetryError(
                    f"the expert registry is not available ({exc}): run with --expert base (the bare default model)"
                )
            _REGISTRIES[key] = ExpertRegistry.from_config(self.config.experts)
        return _REGISTRIES[key]

    def names(self) -> list[str]:
        return [BASE, *self.registry.names()]

    def spec(self, name: str):
        return None if name == BASE else self.registry.get(name)

    def model_for(self, name: str):
        if name == BASE:
            from asymmetry.experts.base import DEFAULT_BASE, load_base

            registry = self._registry
            if registry is not None:  # adapters may sit on the shared base: ask the registry for it with them off
                bare = [n for n in registry.names() if registry.get(n).adapter is None
                        and registry.get(n).base in (None, DEFAULT_BASE)]
                if bare:
                    return registry.model_for(bare[0])
            base = load_base()
            return base.model, base.tokenizer
        return self.registry.model_for(name)


def _render(cfg: EvalConfig, tokenizer: Any, question: str, context: str, system: str | None, spec: Any = None
            ) -> str:
    if cfg.prompt_style == "chat" and spec is not None and hasattr(spec, "render"):
        return spec.render(tokenizer, spec.messages(question, context or None))  # the expert's training format
    if cfg.prompt_style == "chat":
        sys_text = "\n\n".join(t for t in (system or "", context) if t)
        messages = ([{"role": "system", "content": sys_text}] if sys_text else []) + [
            {"role": "user", "content": question}
        ]
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    head = cfg.context_template.format(context=context) if context else ""
    return head + cfg.prompt_template.format(question=question)


def _option_text(cfg: EvalConfig, option: str) -> str:
    return option if cfg.prompt_style == "chat" else cfg.option_template.format(option=option)


def _settings(cfg: EvalConfig, path: Path, n: int, retrieval: bool, expert: str, retrieval_mode: str) -> dict:
    s = asdict(cfg)
    s.update(file=str(path.resolve()), n_questions=n, retrieval=retrieval, expert=expert, retrieval_mode=retrieval_mode)
    return {k: s[k] for k in SETTINGS_KEYS}


def _load_done(pred_path: Path) -> dict[str, dict]:
    done: dict[str, dict] = {}
    if not pred_path.is_file():
        return done
    with open(pred_path, encoding="utf-8") as fh:
        for i, line in enumerate(fh, 1):
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
                done[rec["id"]] = rec
            except (ValueError, KeyError):  # a line cut by the interruption: it is scored again
                log.warning("%s line %d is incomplete; that question is scored again", pred_path, i)
    return done


def _prepare(rows: list[MCRow], cfg: EvalConfig, config: Any, models: ModelSource, retrieval: bool, expert: str,
             timings: dict[str, float]) -> list[Prepared]:
    """Route, retrieve and render prompts for ``rows``."""
    import numpy as np

    n = len(rows)
    need_embed = retrieval or expert == "auto"
    embeddings = None
    if need_embed:
        from asymmetry.index.embedding import embed

        t0 = time.perf_counter()
        emb_model = getattr(getattr(config, "index", None), "embedding_model", None)
        embeddings = embed([r.prompt for r in rows], emb_model)  # Q E
        timings["embed"] = time.perf_counter() - t0
    names: list[str] = []
    confidences: list[float | None] = [None] * n
    t0 = time.perf_counter()
    if expert == "auto":
        try:
            from asymmetry.router import Router
        except ImportError as exc:
            raise AsymmetryError(f"the router is not available ({exc}): pass --expert base or an expert name")
        router_cfg = getattr(config, "router", None)
        router = Router.load(getattr(router_cfg, "path", None), expert_names=models.registry.names())
        routes = router.route_batch(np.asarray(embeddings))
        names = [r.expert for r in routes]
        confidences = [r.confidence for r in routes]
    else:
        if expert != BASE and expert not in models.registry.names():
            raise AsymmetryError(
                f"unknown expert {expert!r}: use auto, {BASE} or one of {', '.join(models.registry.names())}"
            )
        names = [expert] * n
    timings["route"] = time.perf_counter() - t0

    retriever = None
    mode = getattr(getattr(config, "retrieval", None), "mode", "hybrid")
    if retrieval:
        try:
            from asymmetry.retrieval import Retriever, pack_passages
        except ImportError as exc:
            raise AsymmetryError(f"retrieval is not available ({exc}): pass --no-retrieval")
        index_dir = getattr(getattr(config, "index", None), "index_dir", None)
        retriever = Retriever.open(index_dir, config=config)
    prepared: list[Prepared] = []
    t_ret = 0.0
    for i, row in enumerate(rows):
        spec = models.spec(names[i])
        system = getattr(spec, "system_prompt", None) if spec is not None else None
        context, sources = "", []
        if retriever is not None:
            t1 = time.perf_counter()
            query = row.prompt
            if cfg.retrieval_query == "question+options":
                query = query + "\n" + "\n".join(row.options.values())
                q_emb = None
            else:
                q_emb = embeddings[i]
            passages = retriever.search(query, k=cfg.k, mode=mode, query_embedding=q_emb)
            _, tokenizer = models.model_for(names[i])
            context, used = pack_passages(passages, tokenizer, cfg.context_tokens)
            used = passages[:used] if isinstance(used, int) else used  # the passages that fit
            sources = [p.title for p in used]
            t_ret += time.perf_counter() - t1
        _, tokenizer = models.model_for(names[i]) if cfg.prompt_style == "chat" else (None, None)
        prefix = _render(cfg, tokenizer, row.prompt, context, system, spec)
        uncond = _render(cfg, tokenizer, "", "", None) if cfg.prompt_style == "chat" else cfg.unconditional_prefix
        options = [_option_text(cfg, o) for o in row.options.values()]
        prepared.append(Prepared(row, names[i], prefix, uncond, options, confidences[i], sources))
    timings["retrieve"] = t_ret
    return prepared


def _batches(items: list[Prepared], size: int) -> Iterable[list[Prepared]]:
    by_expert: dict[str, list[Prepared]] = defaultdict(list)
    for p in items:
        by_expert[p.expert].append(p)
    for group in by_expert.values():
        for i in range(0, len(group), size):
            yield group[i : i + size]


def run_mc(
    path: str | os.PathLike,
    out_dir: str | os.PathLike,
    cfg: EvalConfig | None = None,
    *,
    config: Any = None,
    limit: int | None = None,
    retrieval: bool | None = None,
    expert: str | None = None,
    batch_size: int | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    compare: Iterable[str | os.PathLike] = (),
    plot: bool = True,
) -> dict[str, Any]:
    """Score an MC CSV file, write submission/report/plot into ``out_dir`` and return the report dict."""
    from tqdm.auto import tqdm

    if config is None:
        from asymmetry.config import Config

        config = Config()
    cfg = cfg or config.eval
    retrieval = cfg.retrieval if retrieval is None else retrieval
    expert = expert or cfg.expert
    batch_size = batch_size or cfg.batch_size
    if batch_size < 1:
        raise AsymmetryError(f"invalid --batch-size {batch_size}: use a positive integer")
    if limit is not None and limit < 1:
        raise AsymmetryError(f"invalid --limit {limit}: use a positive integer")
    path = Path(path)
    rows = read_mc_csv(path)
    if limit is not None:
        rows = rows[:limit]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pred_path = out / PREDICTIONS
    run_path = out / "run.json"
    mode = getattr(getattr(config, "retrieval", None), "mode", "hybrid")
    settings = _settings(cfg, path, len(rows), retrieval, expert, mode)
    done: dict[str, dict] = {}
    if pred_path.exists() and not overwrite:
        if not resume:
            raise AsymmetryError(
                f"{out} already holds a run ({PREDICTIONS}): pass --resume to continue it, --overwrite to start over, "
                "or choose another --out"
            )
        saved = json.loads(run_path.read_text(encoding="utf-8")) if run_path.is_file() else {}
        changed = [k for k in SETTINGS_KEYS if k != "n_questions" and saved.get(k) != settings[k]]
        if changed:
            raise AsymmetryError(
                f"cannot resume in {out}: setting {changed[0]} was {saved.get(changed[0])!r}, now {settings[changed[0]]!r}"
                ": resume with the same options, or use --overwrite / another --out"
            )
        done = _load_done(pred_path)
    elif pred_path.exists():
        pred_path.unlink()
    atomic_write_text(run_path, json.dumps(settings, indent=1) + "\n")

    timings: dict[str, float] = {}
    t_start = time.perf_counter()
    todo = [r for r in rows if r.id not in done]
    models = ModelSource(config)
    prepared = _prepare(todo, cfg, config, models, retrieval, expert, timings) if todo else []

    from asymmetry.eval.scoring import score_batch

    ap_sum = sum(average_precision_at_k(d["ranked"], d["answer"], cfg.top) for d in done.values() if d.get("answer"))
    n_ans = sum(1 for d in done.values() if d.get("answer"))
    t_score = 0.0
    bar = tqdm(total=len(rows), initial=len(rows) - len(todo), unit="q", desc="eval mc", disable=not progress,
               dynamic_ncols=True)
    with open(pred_path, "a", encoding="utf-8") as fh:
        for batch in _batches(prepared, batch_size):
            model, tokenizer = models.model_for(batch[0].expert)
            t0 = time.perf_counter()
            results = score_batch(
                model, tokenizer, [p.prefix for p in batch], [p.options for p in batch], normalize=cfg.normalize,
                cfg_scale=cfg.cfg_scale, unconditional_prefix=[p.unconditional for p in batch],
            )
            t_score += time.perf_counter() - t0
            for p, res in zip(batch, results):
                letters = p.row.letters
                order = sorted(range(len(letters)), key=lambda j: -res.scores[j])
                ranked = [letters[j] for j in order]
                rec = {"id": p.row.id, "ranked": ranked, "answer": p.row.answer, "expert": p.expert,
                       "confidence": p.confidence, "source": p.row.source or path.stem, "scores": res.scores,
                       "loglik": res.loglik, "n_tokens": res.n_tokens, "loglik_plain": res.plain_loglik,
                       "sources": p.sources}
                fh.write(json.dumps(rec) + "\n")
                done[p.row.id] = rec
                if p.row.answer:
                    n_ans += 1
                    ap_sum += average_precision_at_k(ranked, p.row.answer, cfg.top)
            fh.flush()
            os.fsync(fh.fileno())
            bar.update(len(batch))
            if n_ans:
                bar.set_postfix({"map@3": f"{ap_sum / n_ans:.3f}"})
    bar.close()
    timings["score"] = t_score
    timings["total"] = time.perf_counter() - t_start
    records = [done[r.id] for r in rows]
    write_submission([(r["id"], r["ranked"][: cfg.top]) for r in records], out / "submission.csv")
    report = build_report(records, settings, timings, n_scored=len(prepared), top=cfg.top)
    atomic_write_text(out / "report.json", json.dumps(report, indent=1) + "\n")
    if plot:
        from asymmetry.eval.plot import plot_accuracy_by_expert

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
    return {
        "primary_metric": PRIMARY_METRIC,
        PRIMARY_METRIC: overall.get(f"map@{top}"),
        "accuracy": overall["accuracy"],
        "questions": len(records),
        "answered": int(overall["n"]),
        "per_expert": {k: metrics(v) for k, v in sorted(by_expert.items())},
        "per_source": {k: metrics(v) for k, v in sorted(by_source.items())},
        "timings": {**timings, "scored_this_run": float(n_scored),
                    "questions_per_s": n_scored / score_t if score_t > 0 else float("nan")},
        "settings": settings,
    }
