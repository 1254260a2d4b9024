"""How close fbgemm's dynamic int8 kernel (activations quantized per row, ``experts.quantize.int8_decode_kernel``)
keeps a base's next-token distribution to the weight-only int8 kernel (bf16 activations) on the same int8 weights,
and, where ``--float`` is given, to the float32 model.

Teacher forcing: the retrieval prompt of ``base_tiers.py`` (five Wikipedia leads and a question, about 950 tokens) cut
into chunks of ``--chunk`` tokens (at most ``DECODE_ROWS``, so every linear runs the short-input kernel under test),
each one forward pass; at every position: whether the top-1 token agrees, KL(reference || test) in nats, and the
largest logit difference. Both variants are the same loaded model with ``quantize.INT8_DECODE`` switched, so the
only difference is the kernel (the weights, and the output head's weight-only kernel, are shared).

    OMP_NUM_THREADS=1 python benchmarks/int8_dynamic_fidelity.py --bases smollm2,qwen2.5-coder-0.5b,qwen2.5-coder-1.5b \\
        --float smollm2,qwen2.5-coder-0.5b --out benchmarks/results/int8_dynamic_fidelity.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform

from asymmetry.atomic import atomic_write_json  # stdlib only: safe before the environment below is set

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def logits_of(model, chunks):
    import torch

    with torch.inference_mode():
        return [model(torch.tensor([c])).logits[0].float() for c in chunks]  # each (T, V)


def compare(ref: list, test: list) -> dict:
    import torch

    agree, kl, worst, n = 0, 0.0, 0.0, 0
    for r, t in zip(ref, test):
        agree += int((r.argmax(-1) == t.argmax(-1)).sum())
        lr, lt = r.log_softmax(-1), t.log_softmax(-1)
        kl += float((lr.exp() * (lr - lt)).sum(-1).sum())
        worst = max(worst, float((r - t).abs().max()))
        n += r.shape[0]
    return {"positions": n, "top1_agreement": agree / n, "mean_kl_nats": kl / n, "max_abs_logit_diff": worst,
            "torch": torch.__version__}


def measure(spec: str, chunk: int, with_float: bool) -> dict:
    from base_tiers import prompt_ids  # this folder's benchmark of the base tiers (the script's folder is on sys.path)

    from asymmetry.experts import ModelPool, Placement, quantize

    pool = ModelPool()
    base = pool.base(spec, Placement(quantize="int8"))
    ids = prompt_ids(base.tokenizer)
    chunks = [ids[i:i + chunk] for i in range(0, len(ids) - chunk + 1, chunk)]
    out = {"base": spec, "chunk": chunk, "chunks": len(chunks)}
    saved = quantize.INT8_DECODE
    try:
        quantize.INT8_DECODE = "weight-only"
        weight_only = logits_of(base.model, chunks)
        quantize.INT8_DECODE = "dynamic"
        dynamic = logits_of(base.model, chunks)
    finally:
        quantize.INT8_DECODE = saved
    out["dynamic_vs_weight_only"] = compare(weight_only, dynamic)
    if with_float:
        fp = logits_of(pool.base(spec, Placement(quantize="none")).model, chunks)
        out["weight_only_vs_float32"] = compare(fp, weight_only)
        out["dynamic_vs_float32"] = compare(fp, dynamic)
    print(json.dumps(out, indent=1), flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bases", default="smollm2,qwen2.5-coder-1.5b")
    ap.add_argument("--float", default="smollm2", help="bases also compared with their float32 model")
    ap.add_argument("--chunk", type=int, default=100, help="tokens a forward pass (at most DECODE_ROWS)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    import torch

    from asymmetry.experts.quantize import DECODE_ROWS

    if args.chunk > DECODE_ROWS:
        ap.error(f"--chunk must be at most {DECODE_ROWS} (longer inputs dequantise the weight instead)")
    floats = set(filter(None, args.float.split(",")))
    results = {"threads": torch.get_num_threads(), "machine": platform.processor(),
               "cpu_capability": torch.backends.cpu.get_cpu_capability(),
               "bases": [measure(spec, args.chunk, spec in floats) for spec in args.bases.split(",")]}
    if args.out:
        atomic_write_json(args.out, results)


if __name__ == "__main__":
    main()
