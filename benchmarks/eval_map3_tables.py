"""MAP@3 tables: ARC-Easy, ARC-Challenge, OpenBookQA validation; bare base vs routed experts, retrieval on/off, CFG.

For every (model choice, retrieval) pair it runs ``asymmetry eval mc`` once with CFG on (``--cfg-scale``): the same
pass also logs the unguided log-likelihoods, so the "no CFG" rows come from the same run, and both length
normalisations (none, char) are derived from the logged log-likelihoods. Model choices: ``base`` (bare
SmolLM2-135M-Instruct) and ``auto`` (the router picks an expert per question), skipped with a note when the
router/experts are not available. Prints markdown tables and writes a JSON result.

    python benchmarks/eval_map3_tables.py --limit 200 --out benchmarks/eval_map3_tables.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

SETS = ("arc_easy", "arc_challenge", "openbookqa")


def metrics_from_log(pred_path: Path, rows: dict, key: str, normalize: str) -> dict[str, float]:
    from asymmetry.eval.metrics import mc_metrics

    ranked, answers = [], []
    with open(pred_path, encoding="utf-8") as fh:
        for line in fh:
            rec = json.loads(line)
            row = rows[rec["id"]]
            ll = rec[key] if rec.get(key) is not None else rec["loglik"]
            if normalize == "char":
                ll = [x / len(o) for x, o in zip(ll, row.options.values())]
            order = sorted(range(len(ll)), key=lambda j: -ll[j])
            ranked.append([row.letters[j] for j in order])
            answers.append(row.answer)
    return mc_metrics(ranked, answers)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--limit", type=int, default=200, help="questions per set (first N of validation)")
    ap.add_argument("--cfg-scale", type=float, default=1.5)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--experts", default="base:plain,auto:chat",
                    help="comma list of MODEL:STYLE, MODEL one of base, auto or an expert name, STYLE plain or chat "
                    "(the experts' LoRA adapters were trained on the chat format)")
    ap.add_argument("--retrieval", default="off,on", help="comma list of off, on")
    ap.add_argument("--sets", default=",".join(SETS))
    ap.add_argument("--work", help="folder for the runs (default: a temp folder); reruns resume there")
    ap.add_argument("--out", default="benchmarks/eval_map3_tables.json")
    args = ap.parse_args()

    from asymmetry.config import EvalConfig
    from asymmetry.errors import AsymmetryError
    from asymmetry.eval.mcfile import export_rows, read_mc_csv, write_mc_csv
    from asymmetry.eval.runner import PREDICTIONS, run_mc

    work = Path(args.work or tempfile.mkdtemp(prefix="asym-map3-"))
    result: dict = {"limit": args.limit, "cfg_scale": args.cfg_scale, "cells": [], "skipped": []}
    for name in args.sets.split(","):
        csv_path = work / f"{name}.csv"
        if not csv_path.is_file() or len(read_mc_csv(csv_path)) != args.limit:  # a larger --limit extends the runs
            write_mc_csv(export_rows(name, "validation", args.limit), csv_path)
        rows = {r.id: r for r in read_mc_csv(csv_path)}
        for choice in args.experts.split(","):
            expert, _, style = choice.partition(":")
            style = style or "plain"
            for ret in args.retrieval.split(","):
                out = work / f"{name}-{expert}-{style}-{ret}"
                cfg = EvalConfig(expert=expert, retrieval=ret == "on", cfg_scale=args.cfg_scale, normalize="none",
                                 prompt_style=style)
                t0 = time.perf_counter()
                try:
                    report = run_mc(csv_path, out, cfg, batch_size=args.batch_size, resume=True, progress=True,
                                    plot=False)
                except AsymmetryError as exc:
                    result["skipped"].append({"set": name, "expert": choice, "retrieval": ret, "why": str(exc)})
                    print(f"skipped {name} {expert} retrieval={ret}: {exc}")
                    continue
                seconds = time.perf_counter() - t0
                for cfg_label, key in (("off", "loglik_plain"), (f"{args.cfg_scale:g}", "loglik")):
                    for norm in ("none", "char"):
                        m = metrics_from_log(out / PREDICTIONS, rows, key, norm)
                        cell = {"set": name, "expert": choice, "retrieval": ret, "cfg": cfg_label,
                                "normalize": norm, **m, "seconds": seconds,
                                "per_expert": {k: v["questions"] for k, v in report["per_expert"].items()}}
                        result["cells"].append(cell)
                print(f"{name} {choice} retrieval={ret}: {seconds:.0f} s")
                Path(args.out).write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    for norm in ("none", "char"):
        print(f"\nMAP@3 (normalize={norm}, first {args.limit} validation questions per set)\n")
        sets = args.sets.split(",")
        print("| model | retrieval | CFG | " + " | ".join(sets) + " |")
        print("|---|---|---|" + "---|" * len(sets))
        keys = sorted({(c["expert"], c["retrieval"], c["cfg"]) for c in result["cells"]},
                      key=lambda k: (not k[0].startswith("base"), k[0], k[1], k[2] != "off"))
        for expert, ret, cfg_label in keys:
            vals = []
            for s in sets:
                c = [c for c in result["cells"] if (c["set"], c["expert"], c["retrieval"], c["cfg"], c["normalize"])
                     == (s, expert, ret, cfg_label, norm)]
                vals.append(f"{c[0]['map@3']:.3f}" if c else "—")
            print(f"| {expert} | {ret} | {cfg_label} | " + " | ".join(vals) + " |")
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
