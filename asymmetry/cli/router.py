"""``asymmetry router train|eval`` and ``asymmetry route "question"``."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from asymmetry.errors import AsymmetryError
from asymmetry.router.model import Router
from asymmetry.router.pipeline import evaluate_router, train_router


def register(sub) -> None:
    p = sub.add_parser(
        "router",
        help="train or evaluate the switch router",
        description="The switch router sends each question, from its query embedding, to one expert. "
        "Datasets are mapped to experts in router/mapping.toml; labelled JSONL adds your own questions.",
    )
    rsub = p.add_subparsers(dest="router_command", metavar="ACTION")
    t = rsub.add_parser(
        "train",
        help="train, calibrate and save a router (rerun it when experts change)",
        description="Train the router head on the shipped question sets (mapped by router/mapping.toml) and any "
        "labelled JSONL ({\"question\": ..., \"expert\": ...[, \"split\": train|calibration|heldout]} per line), "
        "temperature-scale it on the calibration part, report held-out metrics and save it with its manifest "
        "(default <ASYMMETRY_HOME>/router/router.json, which `asymmetry route` and the assistant then use). "
        "Embeddings of the training questions are cached in <ASYMMETRY_HOME>/router/embeddings/.",
    )
    t.add_argument("--data", action="append", default=[], metavar="FILE",
                   help="labelled JSONL questions (repeatable); new expert names become new labels")
    t.add_argument("--only-data", action="store_true", help="train on the --data files only, not the shipped sets")
    t.add_argument("--mapping", metavar="TOML", help="dataset -> expert mapping (default: router/mapping.toml)")
    t.add_argument("--out", metavar="PATH", help="where to save (file or folder; default: [router] path or home)")
    t.add_argument("--head", choices=["logistic", "mlp"], help="classifier head (default: [router] head)")
    t.add_argument("--max-per-source", type=int, metavar="N", help="cap of training questions per dataset")
    t.add_argument("--json", action="store_true", help="print the held-out metrics as JSON")
    t.set_defaults(func=_train)

    e = rsub.add_parser(
        "eval",
        help="accuracy, per-expert precision/recall, confusion matrix and calibration on held-out questions",
        description="Evaluate a router on the held-out part of the shipped sets (and --data files): accuracy "
        "(primary), macro F1, per-expert precision and recall, the confusion matrix, expected calibration error, "
        "NLL, and the fallback rate at the threshold.",
    )
    e.add_argument("--router", metavar="PATH", help="router file or folder (default: the configured router)")
    e.add_argument("--data", action="append", default=[], metavar="FILE", help="labelled JSONL with held-out lines")
    e.add_argument("--only-data", action="store_true", help="evaluate on the --data files only")
    e.add_argument("--json", action="store_true", help="print the report as JSON")
    e.set_defaults(func=_eval)
    p.set_defaults(func=lambda args: _usage(p))

    r = sub.add_parser(
        "route",
        help="show which expert a question goes to",
        description="Embed the question and route it: the chosen expert (the fallback below the confidence "
        "threshold), the confidence and every expert's probability.",
    )
    r.add_argument("question", help="the question to route")
    r.add_argument("--router", metavar="PATH", help="router file or folder (default: the configured router)")
    r.add_argument("--threshold", type=float, help="confidence threshold (default: [router] threshold)")
    r.add_argument("--json", action="store_true",
                   help='print {"expert", "confidence", "probabilities": {name: p}, "top2", "fallback"}')
    r.set_defaults(func=_route)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 1


def _expert_names(cfg) -> list[str]:
    """The experts the config defines (its [experts] section; the router needs only their names)."""
    return [spec.name for spec in cfg.experts.specs()]


def _load(args, threshold: float | None = None) -> Router:
    cfg = args.cfg
    changes = {"path": args.router} if args.router else {}
    if threshold is not None:
        changes["threshold"] = threshold
    cfg = dataclasses.replace(cfg, router=dataclasses.replace(cfg.router, **changes))
    return Router.from_config(cfg, _expert_names(cfg))


def _print_report(report, console) -> None:
    from rich.table import Table  # rich: only to print reports (keeps `asymmetry --help` fast)

    m = report.metrics
    console.print(
        f"accuracy {m['accuracy']:.4f}  macro-F1 {m['macro_f1']:.4f}  ECE {m['ece']:.4f}  NLL {m['nll']:.4f}  "
        f"fallback rate {m['fallback_rate']:.3f} (accuracy of the rest {m['accuracy_routed']:.4f})  "
        f"n={int(m['n'])}"
    )
    per = Table(title="per expert")
    for col in ("expert", "precision", "recall"):
        per.add_column(col)
    for name in report.labels:
        per.add_row(name, f"{m[f'precision_{name}']:.4f}", f"{m[f'recall_{name}']:.4f}")
    console.print(per)
    conf = Table(title="confusion (rows: true, columns: predicted)")
    conf.add_column("true \\ predicted")
    for name in report.labels:
        conf.add_column(name, justify="right")
    for name, row in zip(report.labels, report.confusion.tolist()):
        conf.add_row(name, *(str(v) for v in row))
    console.print(conf)


def _train(args: argparse.Namespace) -> int:
    from rich.console import Console  # rich: only to print reports (keeps `asymmetry --help` fast)

    cfg = args.cfg.router
    changes = {}
    if args.mapping:
        changes["mapping"] = args.mapping
    if args.head:
        changes["head"] = args.head
    if args.max_per_source:
        changes["max_train_per_source"] = args.max_per_source
    cfg = dataclasses.replace(cfg, **changes)
    router, report = train_router(
        cfg, embedding_model=args.cfg.index.embedding_model, data_files=args.data, builtin=not args.only_data,
        expert_names=_expert_names(args.cfg), out=args.out,
    )
    if args.json:
        print(json.dumps({"path": str(router.path), **report.to_dict()}, indent=1))
        return 0
    console = Console()
    console.print(f"saved router ({cfg.head}, labels {router.labels}, fallback {router.fallback!r}, "
                  f"temperature {router.temperature:.3f}) to {router.path}")
    _print_report(report, console)
    return 0


def _eval(args: argparse.Namespace) -> int:
    from rich.console import Console  # rich: only to print reports (keeps `asymmetry --help` fast)

    router = _load(args)
    report = evaluate_router(router, args.cfg.router, data_files=args.data, builtin=not args.only_data)
    if args.json:
        print(json.dumps({"router": str(router.path), **report.to_dict()}, indent=1))
        return 0
    console = Console()
    console.print(f"router {router.path} (labels {router.labels}, fallback {router.fallback!r}, "
                  f"threshold {router.threshold})")
    _print_report(report, console)
    return 0


def _route(args: argparse.Namespace) -> int:
    if args.threshold is not None and not 0.0 <= args.threshold <= 1.0:
        raise AsymmetryError(f"--threshold {args.threshold} is outside [0, 1]: use a probability such as 0.5")
    if not args.question.strip():
        raise AsymmetryError("the question is empty: pass it in quotes, e.g. asymmetry route \"Why is the sky blue?\"")
    route = _load(args, args.threshold).route_text(args.question)
    if args.json:
        print(json.dumps(route.to_dict()))
        return 0
    note = f" (fallback: top label {route.label} below the threshold)" if route.fallback else ""
    sys.stdout.write(f"{route.expert}  confidence {route.confidence:.3f}{note}\n")
    for name, p in sorted(route.probabilities.items(), key=lambda kv: -kv[1]):
        sys.stdout.write(f"  {name:<14} {p:.3f}\n")
    return 0
