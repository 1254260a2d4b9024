"""Questions/s of shared-prefix batched option scoring vs one full forward pass per option, same model, same run.

Three scorers on the same ARC-Easy validation questions and the default base (SmolLM2-135M-Instruct, fp32, CPU):
  baseline   one forward over prefix + option for every option (no cache, no batching)
  shared     per question: the prefix once, its KV cache copied across the options, all options in one pass
  batched    ``--batch-size`` questions per prefix pass and per option pass (what ``asymmetry eval mc`` runs)
Run twice: without context (short prefix) and with a ~300-token context of real Wikipedia leads from the default
corpus in front of every question (the prefix length retrieval produces). Prints ratios against the baseline and
checks that all three give the same log-likelihoods. Writes a JSON result.

    python benchmarks/eval_scoring_speed.py --questions 24 --out benchmarks/eval_scoring_speed.json
"""

from __future__ import annotations

import argparse
import json
import time


def context_text(tokenizer, n_tokens: int) -> str:
    from asymmetry import defaults

    corpus = json.loads(defaults.default_corpus_path().read_text(encoding="utf-8"))
    parts, used = [], 0
    for entry in list(corpus.values())[:50]:
        text = f"{entry['title']}: {entry['extract']}"
        parts.append(text)
        used += len(tokenizer(text, add_special_tokens=False).input_ids)
        if used >= n_tokens:
            break
    ids = tokenizer("\n".join(parts), add_special_tokens=False).input_ids[:n_tokens]
    return tokenizer.decode(ids)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--questions", type=int, default=24)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--context-tokens", type=int, default=300)
    ap.add_argument("--out", default="benchmarks/eval_scoring_speed.json")
    args = ap.parse_args()

    import torch

    from asymmetry.datasets import load_mc
    from asymmetry.eval.scoring import score_batch, score_options_naive
    from asymmetry.experts import ModelPool

    base = ModelPool().base()
    model, tok = base.model, base.tokenizer
    questions = load_mc("arc_easy", "validation")[: args.questions]
    opts = [[" " + o for o in q.options] for q in questions]
    n_opts = sum(len(o) for o in opts)
    result = {"model": base.name, "questions": len(questions), "options": n_opts, "batch_size": args.batch_size,
              "threads": torch.get_num_threads(), "runs": {}}
    score_batch(model, tok, ["Question: warm up\nAnswer:"], [[" a", " b"]])  # warm-up
    for label, ctx in (("no context", ""), (f"{args.context_tokens}-token context", context_text(tok, args.context_tokens))):
        prefixes = [(ctx + "\n\n" if ctx else "") + f"Question: {q.question}\nAnswer:" for q in questions]
        t0 = time.perf_counter()
        naive = [score_options_naive(model, tok, p, o) for p, o in zip(prefixes, opts)]
        t_naive = time.perf_counter() - t0
        t0 = time.perf_counter()
        shared = [score_batch(model, tok, [p], [o])[0].loglik for p, o in zip(prefixes, opts)]
        t_shared = time.perf_counter() - t0
        t0 = time.perf_counter()
        batched = []
        for i in range(0, len(prefixes), args.batch_size):
            batched += [r.loglik for r in score_batch(model, tok, prefixes[i : i + args.batch_size],
                                                      opts[i : i + args.batch_size])]
        t_batched = time.perf_counter() - t0
        diff = max(abs(a - b) for x, y, z in zip(naive, shared, batched) for a, b in zip(x + x, y + z))
        n = len(questions)
        run = {
            "baseline_q_per_s": n / t_naive,
            "shared_q_per_s": n / t_shared,
            "batched_q_per_s": n / t_batched,
            "shared_vs_baseline": t_naive / t_shared,
            "batched_vs_baseline": t_naive / t_batched,
            "max_abs_loglik_diff": diff,
        }
        result["runs"][label] = run
        print(f"[{label}] {n} questions, {n_opts} options")
        print(f"  baseline (one forward per option): {run['baseline_q_per_s']:.2f} q/s")
        print(f"  shared prefix, per question:        {run['shared_q_per_s']:.2f} q/s  x{run['shared_vs_baseline']:.2f}")
        print(f"  shared prefix, {args.batch_size} questions/batch:  {run['batched_q_per_s']:.2f} q/s  "
              f"x{run['batched_vs_baseline']:.2f}")
        print(f"  max |loglik difference| vs baseline: {diff:.2e}")
    with open(args.out, "w", encoding="utf-8") as fh:
        json.dump(result, fh, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
