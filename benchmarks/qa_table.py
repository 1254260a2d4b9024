"""Print the README's free-form QA table from the runs of benchmarks/qa_tables.sh (report.json of each run)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/results/qa")


def fmt(x):
    return "—" if x is None else f"{x:.2f}"


def main() -> None:
    print("| set | system | n | contains | EM | F1 | ceiling | contains, answer in passages | contains, not in passages "
          "| grounding | s/question |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for run in sorted(ROOT.iterdir()):
        report_file = run / "report.json"
        if not report_file.is_file():
            continue
        report = json.loads(report_file.read_text())
        for name, r in report["systems"].items():
            m = dict(r["overall"], seconds_per_question=r.get("mean_seconds"))
            label = run.name.split("-", 1)[1] if name == "asymmetry" else name
            if name == "asymmetry":
                label = {"default": "asymmetry, default line-up", "default-closed": "asymmetry, no retrieval",
                         "hf-baselines": "asymmetry, default line-up, before attribution",
                         "small": "asymmetry, small line-up", "small-closed": "small line-up, no retrieval"}.get(
                    label, label)
            print(f"| {run.name.split('-')[0]} | {label} | {int(m.get('n') or 0)} | {fmt(m.get('contains'))} | {fmt(m.get('em'))} "
                  f"| {fmt(m.get('f1'))} | {fmt(m.get('retrieval_ceiling'))} | {fmt(m.get('contains_answer_in_passages'))}"
                  f" | {fmt(m.get('contains_answer_not_in_passages'))} | {fmt(m.get('grounding'))} "
                  f"| {fmt(m.get('seconds_per_question'))} |")


if __name__ == "__main__":
    main()
