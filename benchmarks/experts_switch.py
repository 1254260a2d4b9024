"""Experts on one pooled base: the cost of naming the adapter per row, mixed batches, and attaching vs reloading.

Every forward of the engine names its adapter per row (peft's ``adapter_names``), so nothing is switched for the
process and several requests can share the model. This measures, against baselines from the same run (the machine is
shared, absolute times are noisy):

- a decode-sized forward of ONE expert with per-row adapter names vs the same forward with that adapter made the
  model's active adapter (the process-wide switch the pool no longer does);
- one mixed-adapter batch (3 experts x 2 rows) vs one forward per expert;
- choosing an expert on the pooled base (``registry.model``) vs reloading base + adapter.

Uses the committed default adapters (science, commonsense).

    python benchmarks/experts_switch.py [--repeats 5] [--out result.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from peft import PeftModel

from asymmetry.experts import ExpertRegistry, ExpertSpec, ModelPool, load_model
from asymmetry.experts.config import adapters_package_dir


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    paths = {n: adapters_package_dir() / n for n in ("science", "commonsense")}
    specs = [ExpertSpec(name=n, adapter=str(p)) for n, p in paths.items()] + [ExpertSpec(name="general")]
    reg = ExpertRegistry(specs, default="general", pool=ModelPool())
    science = reg.model("science")
    reg.model("commonsense")
    model, tok = science.model, science.tokenizer

    # 1. one expert, a decode-sized forward (1 new token over a 64-token prompt, 2 rows as with CFG)
    prompt = tok(["Why is the sky blue? " * 8] * 2, return_tensors="pt")["input_ids"]  # (2, T)
    with torch.no_grad():
        out = model(input_ids=prompt[:, :-1], use_cache=True, adapter_names=["science"] * 2)
    cache = out.past_key_values
    step = prompt[:, -1:]  # (2, 1)

    def per_row():
        with torch.no_grad():
            model(input_ids=step, past_key_values=cache, use_cache=False, adapter_names=["science"] * 2)
            cache.crop(-1)  # drop the step just added

    def active_adapter():
        with torch.no_grad():
            model(input_ids=step, past_key_values=cache, use_cache=False)
            cache.crop(-1)  # drop the step just added

    per_row_s = timed(per_row, args.repeats * 20)
    model.set_adapter("science")  # the process-wide switch, for the baseline only
    active_s = timed(active_adapter, args.repeats * 20)
    reg.pool.base("smollm2")._no_default_adapter()

    # 2. a mixed-adapter batch vs one forward per expert
    ids = tok(["Why is the sky blue?"] * 6, return_tensors="pt")["input_ids"]  # (B, T)
    rows = ["science", "science", "commonsense", "commonsense", "general", "general"]
    kwargs = reg.batch_kwargs(rows)

    def mixed():
        with torch.no_grad():
            model(input_ids=ids, **kwargs)

    def sequential():
        with torch.no_grad():
            for k, name in enumerate(("science", "commonsense", "general")):
                model(input_ids=ids[2 * k:2 * k + 2], **reg.model(name).forward_kwargs(2))

    mixed_s = timed(mixed, args.repeats)
    seq_s = timed(sequential, args.repeats)

    # 3. choosing an expert on the pool vs reloading base + adapter
    names = ["science", "commonsense", "general"]
    state = {"i": 0}

    def choose():
        state["i"] += 1
        reg.model(names[state["i"] % 3])

    def reload():
        fresh = load_model("smollm2")
        PeftModel.from_pretrained(fresh.model, str(paths["commonsense"]), adapter_name="commonsense")

    choose_s = timed(choose, args.repeats * 20)
    reload_s = timed(reload, args.repeats)
    result = {
        "per_row_step_s": per_row_s, "active_adapter_step_s": active_s, "per_row_over_active": per_row_s / active_s,
        "mixed_batch_s": mixed_s, "per_expert_forwards_s": seq_s, "per_expert_over_mixed": seq_s / mixed_s,
        "choose_expert_s": choose_s, "reload_s": reload_s, "reload_over_choose": reload_s / choose_s,
        "threads": torch.get_num_threads(),
    }
    print(f"one expert, decode step (2 rows): per-row adapter names {per_row_s * 1e3:.2f} ms vs active adapter "
          f"{active_s * 1e3:.2f} ms -> ratio {result['per_row_over_active']:.2f}")
    print(f"3 experts x 2 rows: one mixed-adapter batch {mixed_s * 1e3:.0f} ms vs one forward per expert "
          f"{seq_s * 1e3:.0f} ms -> ratio {result['per_expert_over_mixed']:.2f}")
    print(f"choose expert on the pool {choose_s * 1e6:.0f} us vs reload base+adapter {reload_s:.2f} s "
          f"-> {result['reload_over_choose']:.0f}x faster")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
