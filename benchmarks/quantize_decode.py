"""Decode tokens/s of a base with float32, int8 and int4 weight-only linears (``[experts] quantize``) or all in
bfloat16 (``--modes ...,bf16``: ``[experts] dtype = "bfloat16"``, no quantization), and the prefill time of a
retrieval-sized prompt; ``int8-fphead`` / ``int4-fphead`` are int8 / int4 with the output head left float
(``[experts] quantize_head = false``; by default the head goes to int8 with either mode; a tied one, SmolLM2, decodes through an int8 copy), all measured in the same run: every variant loaded side by side, rounds interleaved (variant
order rotates each round) so the machine's load hits them alike; medians and ratios against ``--baseline`` (float32,
``none``, unless named) of the same run.

Decode: greedy, our sampler (``Generator``), a short prompt, ``--tokens`` new tokens; tokens/s counts the decode steps
only. Prefill: the base_tiers prompt (five passages, about 1,000 tokens), once per round.

    OMP_NUM_THREADS=1 python benchmarks/quantize_decode.py --bases smollm2,qwen2.5-coder-1.5b --rounds 5 \\
        --out benchmarks/results/quantize_decode.json
    OMP_NUM_THREADS=1 python benchmarks/quantize_decode.py --bases qwen2.5-coder-1.5b \\
        --modes int4,int4-fphead,int8,int8-fphead --baseline int8-fphead --out benchmarks/results/quantize_head.json

``--share-linears``: a mode and its ``-fphead`` twin share one load (the twin loads; the mode is a shallow copy of it
with its own int8 head, ``quantize_head``, the same weights the ``[experts] quantize`` load gives): one copy of the
linears instead of two, for a machine short of memory.

``streamed_bytes``: what one decode step reads of the weights (all of them but the input embedding, of which it reads
one row; a head tied to the embedding is read whole, unless it decodes through its int8 copy), the KV cache aside.

A GGUF base loads straight from its file (experts/gguf.py): ``int4`` is its 4-bit blocks as they are (the 1.5B's
Q4_K linears; its Q6_K ones int8), ``int8`` and ``none`` its tensors dequantised in memory.

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
FP_HEAD = "-fphead"  # a mode suffix: the output head stays float (Placement.quantize_head=False)
WEIGHT_ONLY = "-wo"  # a mode suffix: int8 layers decode with the weight-only kernel (else quantize.int8_decode_kernel:
#                      weight-only unless ASYMMETRY_INT8_KERNEL=dynamic)
PROMPT = "Write a short paragraph about the history of the city of Rome."


def bytes_of(model) -> int:
    return sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])


def streamed_bytes(model) -> int:
    """Bytes of weights one decode step reads: all but the input embedding (one row a token), unless the head is it
    (a tied head decoding through its int8 copy, ``TiedInt8Head``, reads that copy instead)."""
    from asymmetry.experts.quantize import TiedInt8Head

    embed = model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    tied = head is not None and head.weight is embed and not isinstance(head, TiedInt8Head)
    return bytes_of(model) - (0 if tied else embed.numel() * embed.element_size())


def with_int8_head(model):
    """A shallow copy of ``model`` (a float head) sharing every module but the head, which it holds in int8."""
    import copy

    from asymmetry.experts.quantize import quantize_head

    twin = copy.copy(model)
    twin._modules = dict(model._modules)  # the top level's children: replacing the head here leaves ``model``'s
    assert quantize_head(twin), "this base's head cannot be quantized (tied to the embedding?)"
    return twin


def placement_of(mode: str):
    """``none``, ``int8``, ``int4`` (``[experts] quantize``), ``int8-fphead`` / ``int4-fphead`` (the output head kept
    float) or ``bf16`` (``[experts] dtype = "bfloat16"``)."""
    from asymmetry.experts import Placement

    if mode == "bf16":
        return Placement(dtype="bfloat16", quantize="none")
    mode = mode.removesuffix(WEIGHT_ONLY)
    quantize = mode.removesuffix(FP_HEAD)
    return Placement(quantize=quantize, quantize_head=quantize == mode)


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
            int8_rows: list[int] | None = None, lengths: list[int] | None = None, prefill_too: bool = True,
            share: bool = False) -> dict:
    import torch
    from base_tiers import prompt_ids  # this folder's benchmark of the base tiers (the script's folder is on sys.path)

    from asymmetry.experts import ModelPool, quantize
    from asymmetry.sampling import Generator, SamplerConfig

    pool = ModelPool()
    gens, load_s, size, streamed = {}, {}, {}, {}
    for mode in sorted(modes, key=lambda m: share and m + FP_HEAD in modes):  # with share: twins load first
        t0 = time.perf_counter()
        if share and mode + FP_HEAD in modes:
            model = with_int8_head(gens[mode + FP_HEAD].model)
            tokenizer = gens[mode + FP_HEAD].tokenizer
        else:
            base = pool.base(spec, placement_of(mode))
            model, tokenizer = base.model, base.tokenizer
        load_s[mode] = time.perf_counter() - t0
        size[mode] = bytes_of(model)
        streamed[mode] = streamed_bytes(model)
        gens[mode] = Generator(model, tokenizer)
    tok = gens[baseline].tokenizer
    short = tok.apply_chat_template([{"role": "user", "content": PROMPT}], add_generation_prompt=True, tokenize=True)
    short = list(short if isinstance(short, list) else short["input_ids"])
    long_ids = prompt_ids(tok)
    greedy = SamplerConfig(temperature=0.0, max_tokens=tokens)
    one = SamplerConfig(temperature=0.0, max_tokens=1)
    tps = {m: [] for m in modes}
    prefill = {m: [] for m in modes}
    texts, out_ids = {}, {}
    for r in range(rounds):
        order = modes[r % len(modes):] + modes[:r % len(modes)]
        for mode in order:
            quantize.INT8_DECODE = "weight-only" if mode.endswith(WEIGHT_ONLY) else None
            with torch.inference_mode():
                res = gens[mode].generate(short, greedy)
                tps[mode].append(res.stats["tokens_per_s"])
                texts[mode], out_ids[mode] = res.text, list(res.tokens)
                if prefill_too:
                    prefill[mode].append(gens[mode].generate(long_ids, one).stats["prefill_s"])
            print(f"{spec} round {r + 1} {mode:5s} decode {tps[mode][-1]:6.2f} tok/s"
                  + (f"  prefill {prefill[mode][-1]:.2f} s ({len(long_ids)} tokens)" if prefill_too else ""), flush=True)
    med = {m: statistics.median(v) for m, v in tps.items()}
    pre = {m: statistics.median(v) if v else None for m, v in prefill.items()}
    sweep = int8_rows_sweep(gens["int8"], long_ids, int8_rows, lengths, rounds) if int8_rows else None
    head = {m: head_agreement(gens[m].model, gens[m + FP_HEAD].model, short, out_ids[m], out_ids[m + FP_HEAD])
            for m in modes if m + FP_HEAD in modes}
    return {
        "base": spec, "rounds": rounds, "tokens": tokens, "prefill_tokens": len(long_ids), "baseline": baseline,
        "int8_rows_sweep": sweep,
        "decode_tokens_per_s": tps, "median_decode_tokens_per_s": med,
        "decode_ratio_vs_baseline": {m: med[m] / med[baseline] for m in modes},
        "prefill_s": prefill, "median_prefill_s": pre,
        "median_prefill_tokens_per_s": {m: len(long_ids) / pre[m] for m in modes} if prefill_too else None,
        "prefill_speedup_vs_baseline": {m: pre[baseline] / pre[m] for m in modes} if prefill_too else None,
        "fastest": {"prefill": min(modes, key=pre.get) if prefill_too else None, "decode": max(modes, key=med.get)},
        "model_bytes": size, "streamed_bytes_per_token": streamed, "load_s": load_s,
        "same_text_as_baseline": {m: texts[m] == texts[baseline] for m in modes}, "texts": texts,
        "int8_head_vs_float_head": head,
    }


def head_agreement(model, fp_head_model, prompt: list[int], ids: list[int], fp_ids: list[int]) -> dict:
    """How close a mode with the int8 head stays to the same mode with the float head: the greedy tokens in common
    from the start, and the logits of every position of the prompt plus those greedy tokens (the float head's)."""
    import torch

    x = torch.tensor([prompt + fp_ids])  # (1, T)
    with torch.inference_mode():
        got, ref = model(x).logits[0].float(), fp_head_model(x).logits[0].float()  # (T, V) each
    diff = (got - ref).abs()  # (T, V)
    return {"greedy_prefix_equal": next((i for i, (a, b) in enumerate(zip(ids, fp_ids)) if a != b),
                                        min(len(ids), len(fp_ids))), "greedy_tokens": len(fp_ids),
            "top1_equal_positions": int((got.argmax(-1) == ref.argmax(-1)).sum()), "positions": x.shape[1],
            "max_abs_logit_diff": float(diff.max()), "mean_abs_logit_diff": float(diff.mean()),
            "max_abs_logit": float(ref.abs().max()),
            "max_log_prob_diff": float((got.log_softmax(-1) - ref.log_softmax(-1)).abs().max())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bases", default="smollm2,qwen2.5-coder-1.5b")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--modes", default=",".join(MODES), help="of int4, int8, int4-fphead, int8-fphead (the head "
                    "float), bf16, none (float32), in load order; a -wo suffix (int8-wo) decodes int8 layers with the weight-only "
                    "kernel whatever ASYMMETRY_INT8_KERNEL says")
    ap.add_argument("--baseline", default=None, help="the mode the ratios are against (default: none if measured)")
    ap.add_argument("--int8-rows", default=None, help="e.g. 16,64: also time short prefills with the int8 kernel "
                    "taking up to each number of rows (int8 must be among --modes)")
    ap.add_argument("--lengths", default="19,43,80", help="prompt lengths of that sweep")
    ap.add_argument("--no-prefill", action="store_true", help="decode only (the head runs on one row of a prefill)")
    ap.add_argument("--share-linears", action="store_true", help="a mode and its -fphead twin share one load")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    import torch

    from asymmetry.experts.quantize import int8_decode_kernel

    results = {"threads": torch.get_num_threads(), "torch": torch.__version__, "machine": platform.processor(),
               "cpu_capability": torch.backends.cpu.get_cpu_capability(), "int8_decode_kernel": int8_decode_kernel(),
               "bases": []}
    modes = args.modes.split(",")
    baseline = args.baseline or ("none" if "none" in modes else modes[0])
    for spec in args.bases.split(","):
        res = measure(spec, args.rounds, args.tokens, modes, baseline,
                      [int(x) for x in args.int8_rows.split(",")] if args.int8_rows else None,
                      [int(x) for x in args.lengths.split(",")], prefill_too=not args.no_prefill,
                      share=args.share_linears)
        results["bases"].append(res)
        print(json.dumps({k: res[k] for k in ("base", "baseline", "median_decode_tokens_per_s",
                                               "decode_ratio_vs_baseline", "median_prefill_tokens_per_s",
                                               "prefill_speedup_vs_baseline", "fastest", "model_bytes",
                                               "streamed_bytes_per_token", "int8_head_vs_float_head",
                                               "same_text_as_baseline")}, indent=1), flush=True)
        if res["int8_rows_sweep"]:
            print(json.dumps(res["int8_rows_sweep"]["median_prefill_s"], indent=1), flush=True)
        import gc

        gc.collect()
    if args.out:
        atomic_write_json(args.out, results)


if __name__ == "__main__":
    main()
