"""Decode tokens/s of a base with float32, int8 and int4 weight-only linears (``[experts] quantize``), and the prefill
time of a retrieval-sized prompt, all measured in the same run: every variant loaded side by side, rounds
interleaved (variant order rotates each round) so the machine's load hits them alike; medians and ratios against
float32 of the same run.

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

MODES = ["int4", "int8", "none"]  # load order: quantized first (a float32 1.5B is the big one)
PROMPT = "Write a short paragraph about the history of the city of Rome."


def bytes_of(model) -> int:
    return sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])


def measure(spec: str, rounds: int, tokens: int) -> dict:
    import torch
    from base_tiers import prompt_ids  # this folder's benchmark of the base tiers (the script's folder is on sys.path)

    from asymmetry.experts import ModelPool, Placement
    from asymmetry.sampling import Generator, SamplerConfig

    pool = ModelPool()
    gens, load_s, size = {}, {}, {}
    for mode in MODES:
        t0 = time.perf_counter()
        base = pool.base(spec, Placement(quantize=mode))
        load_s[mode] = time.perf_counter() - t0
        size[mode] = bytes_of(base.model)
        gens[mode] = Generator(base.model, base.tokenizer)
    tok = gens["none"].tokenizer
    short = tok.apply_chat_template([{"role": "user", "content": PROMPT}], add_generation_prompt=True, tokenize=True)
    short = list(short if isinstance(short, list) else short["input_ids"])
    long_ids = prompt_ids(tok)
    greedy = SamplerConfig(temperature=0.0, max_tokens=tokens)
    one = SamplerConfig(temperature=0.0, max_tokens=1)
    tps = {m: [] for m in MODES}
    prefill = {m: [] for m in MODES}
    texts = {}
    for r in range(rounds):
        order = MODES[r % len(MODES):] + MODES[:r % len(MODES)]
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
    return {
        "base": spec, "rounds": rounds, "tokens": tokens, "prefill_tokens": len(long_ids),
        "decode_tokens_per_s": tps, "median_decode_tokens_per_s": med,
        "decode_ratio_vs_float32": {m: med[m] / med["none"] for m in MODES},
        "prefill_s": prefill, "median_prefill_s": pre,
        "prefill_ratio_vs_float32": {m: pre[m] / pre["none"] for m in MODES},
        "model_bytes": size, "load_s": load_s,
        "same_text_as_float32": {m: texts[m] == texts["none"] for m in MODES}, "texts": texts,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bases", default="smollm2,qwen2.5-coder-1.5b")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    import torch

    results = {"threads": torch.get_num_threads(), "torch": torch.__version__, "machine": platform.processor(),
               "bases": []}
    for spec in args.bases.split(","):
        res = measure(spec, args.rounds, args.tokens)
        results["bases"].append(res)
        print(json.dumps({k: res[k] for k in ("base", "median_decode_tokens_per_s", "decode_ratio_vs_float32",
                                               "median_prefill_s", "prefill_ratio_vs_float32", "model_bytes",
                                               "same_text_as_float32")}, indent=1), flush=True)
        import gc

        gc.collect()
    if args.out:
        atomic_write_json(args.out, results)


if __name__ == "__main__":
    main()
