"""Free-form QA quality of quantized decoding against float32 (issue 15: contains-answer within 1 point).

Runs ``asymmetry eval qa`` on the held-out part of each named set twice, with ``--quantize int4`` (the 1.5B's default)
and ``--quantize none`` (float32), same questions, same defaults otherwise (the default line-up, retrieval, the
experts' greedy decoding), then pairs the two runs question by question: contains-answer, EM, F1, grounding, how many
replies are the same text, and the paired difference with its standard error. An interrupted run resumes; a finished
one is kept (delete its folder to run it again).

    OMP_NUM_THREADS=1 python benchmarks/qa_quantize.py --sets triviaqa:60,nq_open:30 \\
        --out benchmarks/results/qa_quantize
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from controls_pareto import paired as paired_difference  # this folder's scripts (the script's folder is on sys.path)

from asymmetry.atomic import atomic_write_json
from asymmetry.eval.qa import load_predictions

MODES = ("int4", "none")


def run(set_name: str, limit: int, mode: str, out: Path) -> Path:
    """One ``eval qa`` run into ``out/SET-MODE`` (kept if finished, resumed if interrupted)."""
    folder = out / f"{set_name}-{mode}"
    if (folder / "report.json").is_file():
        print(f"kept {folder}", flush=True)
        return folder
    again = ["--resume"] if (folder / "run.json").is_file() else []
    cmd = [sys.executable, "-m", "asymmetry", "--quantize", mode, "eval", "qa", set_name, "--limit", str(limit),
           "--out", str(folder), "--no-progress", *again]
    print(" ".join(cmd[2:]), flush=True)
    subprocess.run(cmd, check=True)
    return folder


def rows(folder: Path) -> dict[str, dict]:
    return load_predictions(folder / "predictions.jsonl")


def paired(a: dict[str, dict], b: dict[str, dict], key: str) -> dict:
    """Mean of a, of b, and of the per-question difference a - b with its standard error, over the shared ids."""
    ids = [i for i in a if i in b]
    difference, se, n = paired_difference(a, b, key)
    return {"n": n, "int4": sum(float(a[i][key]) for i in ids) / n, "float32": sum(float(b[i][key]) for i in ids) / n,
            "difference": difference, "se": se}


def compare(folders: dict[str, Path]) -> dict:
    a, b = rows(folders["int4"]), rows(folders["none"])
    ids = [i for i in a if i in b]
    reports = {m: json.loads((f / "report.json").read_text()) for m, f in folders.items()}
    return {
        "n": len(ids),
        "contains": paired(a, b, "contains"), "em": paired(a, b, "em"), "f1": paired(a, b, "f1"),
        "flips": {"int4_only": sum(a[i]["contains"] > b[i]["contains"] for i in ids),
                  "float32_only": sum(a[i]["contains"] < b[i]["contains"] for i in ids)},
        "same_reply": sum(a[i]["answer"].strip() == b[i]["answer"].strip() for i in ids),
        "grounding": {m: reports[m]["overall"].get("grounding") for m in MODES},
        "retrieval_ceiling": {m: reports[m]["overall"].get("retrieval_ceiling") for m in MODES},
        "seconds_per_question": {m: reports[m]["timings"]["mean_seconds_per_question"]["asymmetry"] for m in MODES},
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sets", default="triviaqa:60,nq_open:30", help="SET:N,... (held-out part, first N)")
    ap.add_argument("--out", default="benchmarks/results/qa_quantize")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results, pooled = {"sets": {}}, {"int4": {}, "none": {}}
    for item in args.sets.split(","):
        set_name, limit = item.split(":")
        folders = {m: run(set_name, int(limit), m, out) for m in MODES}
        results["sets"][set_name] = compare(folders)
        for m in MODES:
            pooled[m].update({f"{set_name}:{k}": v for k, v in rows(folders[m]).items()})
    results["pooled"] = {k: paired(pooled["int4"], pooled["none"], k) for k in ("contains", "em", "f1")}
    atomic_write_json(out / "summary.json", results, indent=1)
    print("\n| set | n | contains int4 | contains float32 | difference (paired SE) | flips int4 / float32 "
          "| same reply |")
    print("|---|---|---|---|---|---|---|")
    for name, r in results["sets"].items():
        c = r["contains"]
        print(f"| {name} | {r['n']} | {c['int4']:.3f} | {c['float32']:.3f} | {c['difference']:+.3f} ({c['se']:.3f}) | "
              f"{r['flips']['int4_only']} / {r['flips']['float32_only']} | {r['same_reply']} |")
    c = results["pooled"]["contains"]
    print(f"| pooled | {c['n']} | {c['int4']:.3f} | {c['float32']:.3f} | {c['difference']:+.3f} ({c['se']:.3f}) | | |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
