"""Expert switching cost: hot-swapping a LoRA adapter on the shared base vs reloading base + adapter.

Also: one mixed-adapter batch (peft ``adapter_names``) vs one forward per expert. Ratios are against baselines
measured in the same run (the machine is shared, absolute times are noisy). Uses the committed default adapters
(science, commonsense) when present, else trains two tiny ones in a temp folder.

    python benchmarks/experts_switch.py [--repeats 5] [--out result.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch


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

    from asymmetry.experts import ExpertRegistry, ExpertSpec
    from asymmetry.experts.base import load_private_copy
    from asymmetry.experts.config import adapters_package_dir
    from asymmetry.experts.data import default_examples
    from asymmetry.experts.training import TrainSettings, train_adapter
    from peft import PeftModel

    shipped = [adapters_package_dir() / n for n in ("science", "commonsense")]
    if all((p / "adapter_config.json").is_file() for p in shipped):
        paths = dict(zip(("science", "commonsense"), shipped))
    else:
        tmp = Path(tempfile.mkdtemp())
        tiny = TrainSettings(max_steps=1, batch_size=2, max_length=48, eval_size=0)
        paths = {n: train_adapter(n, default_examples(n)[:8], tmp / n, settings=tiny, progress=False).adapter_dir
                 for n in ("science", "commonsense")}
    specs = [ExpertSpec(name=n, adapter=str(p)) for n, p in paths.items()] + [ExpertSpec(name="general")]
    reg = ExpertRegistry(specs, default="general", device_map={"": "cpu"})
    model, tok = reg.model_for("science")
    names = ["science", "commonsense", "general"]
    state = {"i": 0}

    def hot_swap():
        state["i"] += 1
        reg.model_for(names[state["i"] % 3])

    def reload():
        fresh = load_private_copy("smollm2")
        PeftModel.from_pretrained(fresh.model, str(paths["commonsense"]), adapter_name="commonsense")

    swap_s = timed(hot_swap, args.repeats * 20)
    reload_s = timed(reload, args.repeats)

    ids = tok(["Why is the sky blue?"] * 6, return_tensors="pt")["input_ids"]  # (B, T)
    rows = ["science", "science", "commonsense", "commonsense", "general", "general"]
    kwargs = reg.batch_kwargs(rows)

    def mixed():
        with torch.no_grad():
            model(input_ids=ids, **kwargs)

    def sequential():
        with torch.no_grad():
            for k, name in enumerate(("science", "commonsense", "general")):
                reg.model_for(name)
                model(input_ids=ids[2 * k:2 * k + 2])

    mixed_s = timed(mixed, args.repeats)
    seq_s = timed(sequential, args.repeats)
    result = {
        "hot_swap_s": swap_s, "reload_s": reload_s, "reload_over_swap": reload_s / swap_s,
        "mixed_batch_s": mixed_s, "per_expert_forwards_s": seq_s, "per_expert_over_mixed": seq_s / mixed_s,
        "threads": torch.get_num_threads(),
    }
    print(f"switch expert: hot swap {swap_s * 1e3:.3f} ms vs reload base+adapter {reload_s:.2f} s "
          f"-> {result['reload_over_swap']:.0f}x faster")
    print(f"3 experts x 2 rows: one mixed-adapter batch {mixed_s * 1e3:.0f} ms vs one forward per expert "
          f"{seq_s * 1e3:.0f} ms -> ratio {result['per_expert_over_mixed']:.2f}")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
