"""Decode tokens/s of a base with float32, int8 and int4 weight-only linears (``[experts] quantize``) or all in
bfloat16 (``--modes ...,bf16``: ``[experts] dtype = "bfloat16"``, no quantization), and the prefill time of a
retrieval-sized prompt, all measured in the same run: every variant loaded side by side, rounds interleaved (variant
order rotates each round) so the machine's load hits them alike; medians and ratios against ``--baseline`` (float32,
``none``, unless named) of the same run.

Decode: greedy, our sampler (``Generator``), a short prompt, ``--tokens`` new tokens; tokens/s counts the decode steps
only. Prefill: the base_tiers prompt (five passages, about 1,000 tokens), once per round.

    OMP_NUM_THREADS=1 python benchmarks/quantize_decode.py --bases smollm2,qwen2.5-coder-1.5b --rounds 5 \\
        --out benchmarks/results/quantize_decode.json

Memory: the 1.5B holds 7.1 GB in float32, 2.3 GB with int8 linears, about 1.6 GB with int4; the quantized copies load
first, so the peak is about 11 GB.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

from asymmetry.atomic import atomic_write_json  # stdlib only: safe before the environment below is set

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

MODES = ["int4", "int8", "bf16", "none"]  # load order: quantized first (a float32 1.5B is the big one)
PROMPT = "Write a short paragraph about the history of the city of Rome."


def bytes_of(model) -> int:
    return sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])


def placement_of(mode: str):
    from asymmetry.experts import Placement

    return Placement(dtype="bfloat16", quantize="none") if mode == "bf16" else Placement(quantize=mode)


def int8_rows_sweep(gen, ids: list[int], thresholds: list[int], lengths: list[int], rounds: int) -> dict:
    """Prefill seconds of the first ``L`` ids (a short prompt, or a chat turn's suffix after KV reuse) on int8
    linears with the int8 kernel taking up to each threshold of rows (``experts.quantize.DECODE_ROWS``; more rows
    dequantise the weight to bf16 for the call), interleaved, medians."""
    from asymmetry.experts import quantize
    from asymmetry.sampling import SamplerConfig

    one, saved = SamplerConfig(temperature=0.0, max_tokens=1), quantize.DECODE_ROWS
    times = {f"{t}/{n}": [] for t in thresholds for n in lengths}
    try:
        for r in range(rounds):
            for n in lengths:
                for t in thresholds[r % len(thresholds):] + thresholds[:r % len(thresholds)]:
                    quantize.DECODE_ROWS = t
                    times[f"{t}/{n}"].append(gen.generate(ids[:n], one).stats["prefill_s"])
                    print(f"int8 kernel up to {t:4d} rows, prefill of {n:4d} tokens: {times[f'{t}/{n}'][-1]:.2f} s",
                          flush=True)
    finally:
        quantize.DECODE_ROWS = saved
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"thresholds": thresholds, "lengths": lengths, "prefill_s": times, "median_prefill_s": med,
            "speedup_vs_first": {k: med[f"{thresholds[0]}/{k.split('/')[1]}"] / v for k, v in med.items()}}


def measure(spec: str, rounds: int, tokens: int, modes: list[str] = MODES, baseline: str = "none",
            int8_rows: list[int] | None = None, lengths: list[int] | None = None) -> dict:
    import torch
    from base_tiers import prompt_ids  # this folder's benchmark of the base tiers (the script's folder is on sys.path)

    from asymmetry.experts import ModelPool
    from asymmetry.sampling import Generator, SamplerConfig

    pool = ModelPool()
    gens, load_s, size = {}, {}, {}
    for mode in modes:
        t0 = time.perf_counter()
        base = pool.base(spec, placement_of(mode))
        load_s[mode] = time.perf_counter() - t0
        size[mode] = bytes_of(base.model)
        gens[mode] = Generator(base.model, base.tokenizer)
    tok = gens[baseline].tokenizer
    short = tok.apply_chat_template([{"role": "user", "content": PROMPT}], add_generation_prompt=True, tokenize=True)
    short = list(short if isinstance(short, list) else short["input_ids"])
    long_ids = prompt_ids(tok)
    greedy = SamplerConfig(temperature=0.0, max_tokens=tokens)
    one = SamplerConfig(temperature=0.0, max_tokens=1)
    tps = {m: [] for m in modes}
    prefill = {m: [] for m in modes}
    texts = {}
    for r in range(rounds):
        order = modes[r % len(modes):] + modes[:r % len(modes)]
        for mode in order:
            with torch.inference_mode():
                res = gens[mode].generate(short, greedy)
                tps[mode].append(res.stats["tokens_per_s"])
                texts[mode] = res.text
                prefill[mode].append(gens[mode].generate(long_ids, one).stats["prefill_s"])
            print(f"{spec} round {r + 1} {mode:5s} decode {tps[mode][-1]:6.2f} tok/s  prefill {prefill[mode][-1]:.2f} s"
                  f" ({len(long_ids)} tokens)", flush=True)
    med = {m: statistics.median(v) for m, v in tps.items()}
    pre = {m: statistics.median(v) for m, v in prefill.items()}
    sweep = int8_rows_sweep(gens["int8"], long_ids, int8_rows, lengths, rounds) if int8_rows else None
    return {
        "base": spec, "rounds": rounds, "tokens": tokens, "prefill_tokens": len(long_ids), "baseline": baseline,
        "int8_rows_sweep": sweep,
        "decode_tokens_per_s": tps, "median_decode_tokens_per_s": med,
        "decode_ratio_vs_baseline": {m: med[m] / med[baseline] for m in modes},
        "prefill_s": prefill, "median_prefill_s": pre,
        "median_prefill_tokens_per_s": {m: len(long_ids) / pre[m] for m in modes},
        "prefill_speedup_vs_baseline": {m: pre[baseline] / pre[m] for m in modes},
        "fastest": {"prefill": min(modes, key=pre.get), "decode": max(modes, key=med.get)},
        "model_bytes": size, "load_s": load_s,
        "same_text_as_baseline": {m: texts[m] == texts[baseline] for m in modes}, "texts": texts,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bases", default="smollm2,qwen2.5-coder-1.5b")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--modes", default=",".join(MODES), help="of int4, int8, bf16, none (float32), in load order")
    ap.add_argument("--baseline", default=None, help="the mode the ratios are against (default: none if measured)")
    ap.add_argument("--int8-rows", default=None, help="e.g. 16,64: also time short prefills with the int8 kernel "
                    "taking up to each number of rows (int8 must be among --modes)")
    ap.add_argument("--lengths", default="19,43,80", help="prompt lengths of that sweep")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    import torch

    results = {"threads": torch.get_num_threads(), "torch": torch.__version__, "machine": platform.processor(),
               "bases": []}
    modes = args.modes.split(",")
    baseline = args.baseline or ("none" if "none" in modes else modes[0])
    for spec in args.bases.split(","):
        res = measure(spec, args.rounds, args.tokens, modes, baseline,
                      [int(x) for x in args.int8_rows.split(",")] if args.int8_rows else None,
                      [int(x) for x in args.lengths.split(",")])
        results["bases"].append(res)
        print(json.dumps({k: res[k] for k in ("base", "baseline", "median_decode_tokens_per_s",
                                               "decode_ratio_vs_baseline", "median_prefill_tokens_per_s",
                                               "prefill_speedup_vs_baseline", "fastest", "model_bytes",
                                               "same_text_as_baseline")}, indent=1), flush=True)
        if res["int8_rows_sweep"]:
            print(json.dumps(res["int8_rows_sweep"]["median_prefill_s"], indent=1), flush=True)
        import gc

        gc.collect()
    if args.out:
        atomic_write_json(args.out, results)


if __name__ == "__main__":
    main()
