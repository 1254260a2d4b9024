"""The one script a GPU session runs for the experts: split placement, generation through our sampler, adapter
switching and a mixed-adapter batch on the larger base. NOT run on a GPU yet (no GPU in the task that wrote it).

    python benchmarks/gpu_experts_check.py [--gpu-memory 300MiB] [--out gpu_experts.json]

1. Loads Qwen2.5-Coder-0.5B-Instruct with ``device_map="auto"`` and a ``max_memory`` that forces a split between
   GPU 0 and CPU RAM (``--gpu-memory`` on the GPU, the rest in RAM); prints how many modules went where.
2. Registry on that placement: ``scholar`` (its LoRA adapter; a tiny one is trained on CPU if it is not shipped)
   and a bare expert on the same base; generates through ``asymmetry.sampling.Generator`` for each, switching
   adapters, then ONE batch mixing both experts (peft per-row ``adapter_names``) and checks each mixed row equals
   its single-expert greedy output.
3. Baseline in the same run: the same generation with the whole model on the GPU; prints the split/GPU-only ratio.
4. With bitsandbytes installed: the same with 4-bit loading (``quantization="4bit"``).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import Counter
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gpu-memory", default="300MiB", help="max_memory for GPU 0 (small, to force a split)")
    ap.add_argument("--tokens", type=int, default=24)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    import torch

    from asymmetry.experts import ExpertRegistry, ExpertSpec, ModelPool
    from asymmetry.experts.config import adapters_package_dir
    from asymmetry.sampling import Generator, SamplerConfig

    if not torch.cuda.is_available():
        print("no CUDA device: this script is for a GPU machine")
        return 1
    report: dict = {"device": torch.cuda.get_device_name(0)}
    adapter = adapters_package_dir() / "scholar"
    if not (adapter / "adapter_config.json").is_file():
        from asymmetry.experts.data import default_examples
        from asymmetry.experts.training import AdapterTrainSettings, train_adapter

        adapter = Path(tempfile.mkdtemp()) / "scholar"
        train_adapter("scholar", default_examples("scholar")[:16], adapter, base="qwen2.5-coder-0.5b",
                      settings=AdapterTrainSettings(max_steps=2, batch_size=2, max_length=128, eval_size=0), progress=False)
    specs = [ExpertSpec(name="scholar", base="qwen2.5-coder-0.5b", adapter=str(adapter)),
             ExpertSpec(name="bare", base="qwen2.5-coder-0.5b")]
    question = "Which gas makes up most of Earth's atmosphere?"
    config = SamplerConfig(max_tokens=args.tokens, greedy=True)

    def run(placement: dict, label: str) -> dict:
        reg = ExpertRegistry(specs, default="bare", pool=ModelPool(), **placement)
        t = time.perf_counter()
        scholar = reg.model("scholar")
        load_s = time.perf_counter() - t
        where = Counter(str(v) for v in getattr(scholar.base.loaded.model, "hf_device_map", {}).values())
        gen = Generator(scholar.model, scholar.tokenizer, lock=scholar.lock)
        prompt = gen.chat_prompt(question)
        out, times = {}, {}
        for name in ("scholar", "bare", "scholar"):
            t = time.perf_counter()
            g = gen.generate(prompt, config, row_kwargs=reg.model(name).row_kwargs())
            times[name] = time.perf_counter() - t
            out[name] = g.text
        kw = reg.batch_kwargs(["scholar", "bare"])
        mixed = gen.generate_batch([prompt, prompt], config, forward_kwargs=kw)
        res = {
            "placement": {k: str(v) for k, v in placement.items()}, "modules_per_device": dict(where),
            "load_s": round(load_s, 2), "texts": out, "seconds": {k: round(v, 3) for k, v in times.items()},
            "mixed_batch_texts": [m.text for m in mixed],
            "mixed_rows_match_single": [mixed[0].text == out["scholar"], mixed[1].text == out["bare"]],
            "adapters_differ": out["scholar"] != out["bare"],
            "gpu_peak_mib": round(torch.cuda.max_memory_allocated() / 2**20),
        }
        print(f"[{label}] modules per device {dict(where)}; load {load_s:.1f} s")
        for k, v in out.items():
            print(f"[{label}] {k}: {v!r} ({times[k]:.2f} s)")
        print(f"[{label}] mixed batch rows match single-expert output: {res['mixed_rows_match_single']}")
        return res

    split = run({"device_map": "auto", "max_memory": {0: args.gpu_memory, "cpu": "48GiB"},
                 "offload_folder": tempfile.mkdtemp(), "dtype": "float32"}, "split GPU+CPU")
    gpu = run({"device_map": {"": 0}, "dtype": "float32"}, "GPU only (baseline)")
    report.update(split=split, gpu_only=gpu,
                  split_over_gpu_only=round(split["seconds"]["scholar"] / gpu["seconds"]["scholar"], 2))
    print(f"split placement / GPU-only generation time: {report['split_over_gpu_only']}x")
    try:
        import bitsandbytes  # noqa: F401

        report["4bit"] = run({"device_map": "auto", "quantization": "4bit", "dtype": "bfloat16"}, "4-bit")
    except ImportError:
        print("bitsandbytes not installed: 4-bit path skipped")
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
