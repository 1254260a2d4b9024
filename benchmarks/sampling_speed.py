"""Sampler speed: our loop vs HF ``generate``, batched CFG, mirostat and a JSON-schema grammar, in ONE run.

Every figure is seconds per generated token (median over --repeats, the variants interleaved so machine load hits
them alike) and every claim is a ratio against a baseline measured in the same run:

  ours plain / HF generate plain          target <= 1.00
  ours CFG / ours plain                   target <= 1.35   (HF guidance_scale / HF plain printed alongside)
  ours mirostat v2 / ours top-k           target <= 1.05
  ours JSON schema / ours unconstrained   target <= 1.20

    python benchmarks/sampling_speed.py --tokens 48 --repeats 3 --out /tmp/sampling_speed.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

from asymmetry.atomic import atomic_write_json  # stdlib only: safe before the environment below is set

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

PROMPT = "Once upon a time, in a small village by the sea,"
NEGATIVE = "The weather report for today:"
SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "story": {"type": "string"}},
    "required": ["name", "story"],
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=48, help="tokens generated per run")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved repetitions; the median is reported")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--model", default=None, help="base model spec (default: the embedded SmolLM2)")
    ap.add_argument("--out", default=None, help="write the figures as JSON here")
    args = ap.parse_args(argv)

    import torch

    from asymmetry.experts import ModelPool
    from asymmetry.sampling import Generator, SamplerConfig

    if args.threads:
        torch.set_num_threads(args.threads)
    base = ModelPool().base(args.model)
    model, tok = base.model, base.tokenizer
    gen = Generator(model, tok)
    n = args.tokens
    ids = tok(PROMPT, return_tensors="pt").input_ids
    neg_ids = tok(NEGATIVE, return_tensors="pt").input_ids
    chat = gen.chat_prompt("Invent a character and tell a short story about them, as JSON.")
    plain = SamplerConfig(temperature=0.7, top_k=50, max_tokens=n, seed=0)
    hf_kw = {"do_sample": True, "temperature": 0.7, "top_k": 50, "top_p": 1.0, "max_new_tokens": n, "min_new_tokens": n,
                 "attention_mask": torch.ones_like(ids), "pad_token_id": tok.eos_token_id}

    def hf(**extra):
        torch.manual_seed(0)
        with torch.inference_mode():
            out = model.generate(ids, **hf_kw, **extra)
        return out.shape[1] - ids.shape[1]

    def ours(cfg, prompt=PROMPT, **kw):
        return len(gen.generate(prompt, cfg, **kw).tokens)

    variants = {
        "hf_plain": lambda: hf(),
        "hf_cfg": lambda: hf(guidance_scale=1.5, negative_prompt_ids=neg_ids),
        "ours_plain": lambda: ours(plain),
        "ours_cfg": lambda: ours(plain.replace(cfg_scale=1.5), negative_prompt=NEGATIVE),
        "ours_mirostat": lambda: ours(SamplerConfig(temperature=0.7, mirostat=2, tau=5.0, max_tokens=n, seed=0)),
        "ours_chat_plain": lambda: ours(plain.replace(temperature=1.0), prompt=chat),
        "ours_chat_json": lambda: ours(plain.replace(temperature=1.0, json_schema=json.dumps(SCHEMA)), prompt=chat),
    }
    variants["hf_plain"]()  # warm-up (allocations, xgrammar compile below)
    variants["ours_chat_json"]()
    per_token: dict[str, list[float]] = {k: [] for k in variants}
    for rep in range(args.repeats):
        for name, fn in variants.items():
            t0 = time.perf_counter()
            produced = fn()
            per_token[name].append((time.perf_counter() - t0) / max(produced, 1))
        print(f"repeat {rep + 1}/{args.repeats} done", file=sys.stderr, flush=True)
    med = {k: statistics.median(v) for k, v in per_token.items()}
    ratios = {
        "ours_plain / hf_plain": (med["ours_plain"] / med["hf_plain"], 1.00),
        "hf_cfg / hf_plain": (med["hf_cfg"] / med["hf_plain"], None),
        "ours_cfg / ours_plain": (med["ours_cfg"] / med["ours_plain"], 1.35),
        "ours_cfg / hf_cfg": (med["ours_cfg"] / med["hf_cfg"], None),
        "ours_mirostat / ours_plain(top-k)": (med["ours_mirostat"] / med["ours_plain"], 1.05),
        "ours_json / ours_unconstrained": (med["ours_chat_json"] / med["ours_chat_plain"], 1.20),
    }
    print(f"threads={torch.get_num_threads()} tokens={n} repeats={args.repeats} load={os.getloadavg()[0]:.1f}")
    for name, v in med.items():
        print(f"  {name:18s} {v * 1000:8.1f} ms/token  ({1 / v:5.1f} tok/s)")
    for name, (r, target) in ratios.items():
        verdict = "" if target is None else ("  OK" if r <= target else f"  MISSED (target <= {target:.2f})")
        print(f"  {name:36s} {r:5.2f}x{verdict}")
    if args.out:
        data = {"ms_per_token": {k: v * 1000 for k, v in med.items()},
                "ratios": {k: {"ratio": r, "target": t} for k, (r, t) in ratios.items()},
                "tokens": n, "repeats": args.repeats, "threads": torch.get_num_threads(),
                "loadavg": os.getloadavg()[0]}
        atomic_write_json(args.out, data, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
