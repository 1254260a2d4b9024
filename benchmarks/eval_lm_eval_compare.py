"""Agreement with lm-evaluation-harness: same model, same questions, fed as a local CSV.

1. Export N ARC-Easy validation questions with ``asymmetry eval export`` (the Kaggle layout).
2. lm-eval (``pip install lm-eval``) scores that CSV through a custom task YAML (``dataset_path: csv``, the same
   ``Question: ...\\nAnswer:`` prompt and `` option`` continuations as its own ``arc_easy`` task) with its ``hf``
   model pointed at SmolLM2 converted to a safetensors folder (``asymmetry.experts.base.convert_gguf``; our own
   loader reads the GGUF itself).
3. ``asymmetry eval mc`` scores the same CSV without retrieval on the bare base, with ``--normalize none`` (lm-eval's
   ``acc``) and ``--normalize char`` (``acc_norm``).
Prints both accuracies and their difference (goal: within 1 point) and writes a JSON result.

    python benchmarks/eval_lm_eval_compare.py --limit 200 --out benchmarks/eval_lm_eval_compare.json
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

TASK_YAML = """task: asym_mc_local
dataset_path: csv
dataset_kwargs:
  data_files:
    validation: {csv}
output_type: multiple_choice
validation_split: validation
doc_to_text: "Question: {{{{prompt}}}}\\nAnswer:"
doc_to_choice: "{{{{[A, B, C, D, E] | select | list}}}}"
doc_to_target: "{{{{['A', 'B', 'C', 'D', 'E'].index(answer)}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


def run_lm_eval(csv_path: Path, model_dir: Path, workdir: Path, batch_size: int) -> dict[str, float]:
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    task_dir = workdir / "tasks"
    task_dir.mkdir(parents=True, exist_ok=True)
    (task_dir / "asym_mc_local.yaml").write_text(TASK_YAML.format(csv=csv_path.resolve()), encoding="utf-8")
    out = simple_evaluate(
        model="hf",
        model_args=f"pretrained={model_dir},dtype=float32,device=cpu",
        tasks=["asym_mc_local"],
        task_manager=TaskManager(include_path=str(task_dir)),
        batch_size=batch_size,
        num_fewshot=0,
        log_samples=True,
    )
    res = out["results"]["asym_mc_local"]
    logliks = {s["doc"]["id"]: [float(r[0]) for r in s["filtered_resps"]] for s in out["samples"]["asym_mc_local"]}
    return {"acc": res["acc,none"], "acc_norm": res["acc_norm,none"]}, logliks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="arc_easy")
    ap.add_argument("--limit", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--out", default="benchmarks/eval_lm_eval_compare.json")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

    from asymmetry.config import EvalConfig
    from asymmetry.eval.mcfile import export_rows, read_mc_csv, write_mc_csv
    from asymmetry.eval.runner import run_mc
    from asymmetry.experts.base import BUILTIN_FOLDERS, DEFAULT_BASE, builtin_gguf, convert_gguf

    work = Path(tempfile.mkdtemp(prefix="asym-lmeval-"))
    csv_path = write_mc_csv(export_rows(args.dataset, "validation", args.limit), work / f"{args.dataset}.csv")
    model_dir = convert_gguf(builtin_gguf(DEFAULT_BASE), BUILTIN_FOLDERS[DEFAULT_BASE], "float32")
    result: dict = {"dataset": args.dataset, "split": "validation", "questions": args.limit, "model": str(model_dir)}

    t0 = time.perf_counter()
    rep = run_mc(csv_path, work / "ours", EvalConfig(normalize="none", retrieval=False, expert="base"),
                 batch_size=args.batch_size, progress=False, plot=False)
    ours = {"acc": rep["accuracy"]}
    # acc_norm from the same pass: the logged log-likelihoods divided by the option lengths in characters
    rows = {r.id: r for r in read_mc_csv(csv_path)}
    hits, ours_ll = [], {}
    with open(work / "ours" / "predictions.jsonl", encoding="utf-8") as fh:
        for line in fh:
            rec = json.loads(line)
            ours_ll[rec["id"]] = rec["loglik"]
            row = rows[rec["id"]]
            norm = [ll / len(o) for ll, o in zip(rec["loglik"], row.options.values())]
            hits.append(row.letters[max(range(len(norm)), key=norm.__getitem__)] == row.answer)
    ours["acc_norm"] = sum(hits) / len(hits)
    result["asymmetry_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    theirs, their_ll = run_lm_eval(csv_path, model_dir, work, args.batch_size)
    result["lm_eval_s"] = time.perf_counter() - t0
    result["asymmetry"], result["lm_eval"] = ours, theirs
    result["difference_points"] = {m: 100 * (ours[m] - theirs[m]) for m in ours}
    # per option: the same log-likelihoods? per question: the same top option?
    diffs = [abs(a - b) for qid, lls in their_ll.items() for a, b in zip(ours_ll[qid], lls)]
    same_top = [max(range(len(lls)), key=lls.__getitem__) == max(range(len(lls)), key=ours_ll[qid].__getitem__)
                for qid, lls in their_ll.items()]
    result["max_abs_loglik_diff"] = max(diffs)
    result["same_top_option"] = sum(same_top) / len(same_top)
    print(f"per option: max |loglik difference| {max(diffs):.2e} over {len(diffs)} options; "
          f"same top option on {100 * result['same_top_option']:.1f}% of questions")
    for m in ("acc", "acc_norm"):
        print(f"{m:<9} asymmetry {100 * ours[m]:.1f}%  lm-eval {100 * theirs[m]:.1f}%  "
              f"difference {result['difference_points'][m]:+.1f} points")
    print(f"time: asymmetry {result['asymmetry_s']:.0f} s (one pass, both normalisations), lm-eval {result['lm_eval_s']:.0f} s")
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
