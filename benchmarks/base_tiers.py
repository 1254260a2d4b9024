"""What each base tier costs on this machine: load time, time to first token of a retrieval-sized prompt, decode
tokens/s — through our sampler, with plain transformers ``generate`` (greedy, same model, same prompt) as the
baseline measured in the same run.

Each base loads from its converted cache with the placement a user gets by default (``quantize = "auto"``: int8
linears for the 1.5B, float32 below). The prompt is the default line-up's shape: a system instruction, five real
passages of the default corpus (about 1,000 tokens) and a question, in the model's chat template.

    python benchmarks/base_tiers.py --tokens 32 --repeats 2 --out benchmarks/results/base_tiers.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import time

from asymmetry.atomic import atomic_write_json  # stdlib only: safe before the environment below is set

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

BASES = ["smollm2", "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"]
QUESTION = "Who developed the theory of general relativity?"


def prompt_ids(tokenizer, n_passages: int = 5) -> list[int]:
    from asymmetry.index.corpus import open_corpus

    leads = [a for a in itertools.islice(open_corpus("default"), 400) if 80 < len(a.text.split()) < 200]
    passages = "\n\n".join(f"[{i + 1}] {a.title}\n{a.text}" for i, a in enumerate(leads[:n_passages]))
    messages = [{"role": "system", "content": "Answer the question directly, in one short sentence, citing the "
                 "numbered passages you used like [1].\n\n" + passages},
                {"role": "user", "content": QUESTION}]
    out = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    return list(out if isinstance(out, list) else out["input_ids"])


def measure(spec: str, tokens: int, repeats: int) -> dict:
    import torch

    from asymmetry.experts import ModelPool
    from asymmetry.sampling import Generator, SamplerConfig

    t0 = time.perf_counter()
    base = ModelPool().base(spec)
    load_s = time.perf_counter() - t0
    model, tok = base.model, base.tokenizer
    ids = prompt_ids(tok)
    gen = Generator(model, tok)
    greedy = SamplerConfig(temperature=0.0, max_tokens=tokens)
    ours_ttft, ours_tps, hf_ttft, hf_tps = [], [], [], []
    x = torch.tensor([ids])
    for _ in range(repeats):  # interleaved, so machine load hits both alike
        stats = gen.generate(ids, greedy).stats
        ours_ttft.append(stats["prefill_s"])
        ours_tps.append(stats["tokens_per_s"])
        with torch.inference_mode():
            t = time.perf_counter()
            model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=1, do_sample=False)
            first = time.perf_counter() - t
            t = time.perf_counter()
            out = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=tokens, min_new_tokens=tokens,
                                 do_sample=False)
            total = time.perf_counter() - t
        hf_ttft.append(first)
        hf_tps.append((out.shape[1] - x.shape[1] - 1) / max(total - first, 1e-9))
    params = sum(p.numel() for p in model.parameters())
    row = {"base": base.name, "parameters": params, "prompt_tokens": len(ids), "load_s": load_s,
           "ttft_s": statistics.median(ours_ttft), "decode_tokens_per_s": statistics.median(ours_tps),
           "hf_ttft_s": statistics.median(hf_ttft), "hf_decode_tokens_per_s": statistics.median(hf_tps)}
    row["decode_ratio_vs_hf"] = row["decode_tokens_per_s"] / row["hf_decode_tokens_per_s"]
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bases", default=",".join(BASES), help="comma-separated base specs")
    ap.add_argument("--tokens", type=int, default=32, help="tokens decoded per run")
    ap.add_argument("--repeats", type=int, default=2, help="interleaved repetitions; the median is reported")
    ap.add_argument("--out", default=None, help="write the rows as JSON here")
    args = ap.parse_args(argv)
    rows = []
    print("| base | parameters | load s | prompt tokens | time to first token s (HF) | decode tokens/s (HF) | "
          "decode ours/HF |")
    print("|---|---|---|---|---|---|---|")
    for spec in args.bases.split(","):
        r = measure(spec, args.tokens, args.repeats)
        rows.append(r)
        print(f"| {r['base']} | {r['parameters'] / 1e9:.2f} B | {r['load_s']:.1f} | {r['prompt_tokens']} | "
              f"{r['ttft_s']:.2f} ({r['hf_ttft_s']:.2f}) | {r['decode_tokens_per_s']:.1f} "
              f"({r['hf_decode_tokens_per_s']:.1f}) | {r['decode_ratio_vs_hf']:.2f} |", flush=True)
    if args.out:
        atomic_write_json(args.out, {"tokens": args.tokens, "repeats": args.repeats, "rows": rows}, indent=1)
    print(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
