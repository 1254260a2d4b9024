"""The outside anchor for decode speed: llama.cpp (``llama-cpp-python``, the ``bench`` extra) decoding the same GGUF
file as our ``Generator`` with float32, int8 and int4 weights, interleaved in the same run, with the memory-bandwidth
bound of each (``bandwidth_bound.py``) measured in the same run too.

Same prompt token ids (the chat prompt of ``quantize_decode.py``, from our tokenizer, which was converted from the
same GGUF), same number of new tokens, same thread count. Two sampler settings on both sides: greedy, and the full
stack at llama.cpp's usual settings (repeat penalty 1.1, temperature 0.8, top-k 40, top-p 0.95, min-p 0.05, seeded).
Tokens/s counts the decode steps after the first token on both sides (our ``stats["tokens_per_s"]``; llama.cpp: wall
time from its first yielded token to its last, through the Python binding; its own C-side ``t_eval_ms`` is reported
too). Rounds rotate the order of the variants; medians. Ratios: ours / llama.cpp, and each path / its bound.

    pip install -e '.[bench]'      # builds llama-cpp-python (see README, Benchmarks)
    python benchmarks/llamacpp_anchor.py --bases smollm2,qwen2.5-coder-0.5b,qwen2.5-coder-1.5b --rounds 3 \\
        --out benchmarks/results/llamacpp_anchor.json
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import time

from asymmetry.atomic import atomic_write_json  # stdlib only: safe before the environment below is set

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# llama.cpp's usual sampling settings, the same on both sides ("full": every stage of ours that llama.cpp also has)
FULL = {"repeat_penalty": 1.1, "temperature": 0.8, "top_k": 40, "top_p": 0.95, "min_p": 0.05}
SEED = 1234
SETTINGS = ("greedy", "full")
DEFAULT_MODES = {"smollm2": "none,int8,int4", "qwen2.5-coder-0.5b": "none,int8,int4",
                 "qwen2.5-coder-1.5b": "int8,int4"}  # the 1.5B's float32 copy is 7 GB on a shared 24 GB machine
FORMAT_OF = {"none": "fp32", "int8": "int8", "int4": "int4", "int8-fphead": "int8-fphead", "int4-fphead": "int4-fphead",
             "llama.cpp": "gguf"}  # the -fphead modes: the output head float ([experts] quantize_head = false)


def require_llama_cpp():
    """Import ``llama_cpp`` or exit with the install command."""
    try:
        import llama_cpp
    except ImportError:
        raise SystemExit("llama_cpp is not installed: pip install -e '.[bench]' (the benchmark-only extra; it compiles "
                         "llama-cpp-python, several minutes)") from None
    return llama_cpp


def llama_decode(llama_cpp, llm, ids: list[int], tokens: int, setting: str) -> dict:
    """Decode ``tokens`` new tokens after ``ids`` with llama.cpp; tokens/s over the steps after the first token."""
    kw = {"temp": 0.0} if setting == "greedy" else {
        "temp": FULL["temperature"], "top_k": FULL["top_k"], "top_p": FULL["top_p"], "min_p": FULL["min_p"],
        "repeat_penalty": FULL["repeat_penalty"]}
    llm.reset()  # no prefix reuse between runs: every run prefills
    llm.set_seed(SEED)
    llama_cpp.llama_perf_context_reset(llm.ctx)
    out, stamps = [], []
    for tok in llm.generate(ids, **kw):  # yields a token, then evaluates it on the next iteration
        stamps.append(time.perf_counter())
        out.append(tok)
        if len(out) == tokens:
            break
    perf = llama_cpp.llama_perf_context(llm.ctx)
    return {"tokens_per_s": (len(out) - 1) / (stamps[-1] - stamps[0]), "tokens": out,
            "c_eval_tokens_per_s": perf.n_eval / (perf.t_eval_ms / 1000) if perf.t_eval_ms else None}


def measure(spec: str, modes: list[str], rounds: int, tokens: int, threads: int, bw: dict, llama_batch: int) -> dict:
    import torch
    from bandwidth_bound import bound, bytes_per_token  # this folder's scripts (the script's folder is on sys.path)
    from quantize_decode import PROMPT, bytes_of, placement_of

    from asymmetry.experts import ModelPool
    from asymmetry.experts.base import builtin_gguf
    from asymmetry.sampling import Generator, SamplerConfig

    llama_cpp = require_llama_cpp()
    gguf = builtin_gguf(spec)
    pool = ModelPool()
    gens, size = {}, {}
    for mode in modes:
        base = pool.base(spec, placement_of(mode))
        size[mode] = bytes_of(base.model)
        gens[mode] = Generator(base.model, base.tokenizer)
    tok = gens[modes[0]].tokenizer
    ids = tok.apply_chat_template([{"role": "user", "content": PROMPT}], add_generation_prompt=True, tokenize=True)
    ids = list(ids if isinstance(ids, list) else ids["input_ids"])
    llm = llama_cpp.Llama(model_path=str(gguf), n_ctx=512, n_threads=threads, n_threads_batch=threads, seed=SEED,
                          n_batch=llama_batch, n_ubatch=llama_batch, verbose=False)
    configs = {"greedy": SamplerConfig(temperature=0.0, max_tokens=tokens),
               "full": SamplerConfig(max_tokens=tokens, seed=SEED, **FULL)}
    variants = ["llama.cpp", *modes]
    tps = {v: {s: [] for s in SETTINGS} for v in variants}
    c_tps, n_tokens, greedy_ids = [], {v: {} for v in variants}, {}
    llama_decode(llama_cpp, llm, ids, 4, "greedy")  # warm-up: first-call allocations on both sides
    for mode in modes:
        gens[mode].generate(ids, SamplerConfig(temperature=0.0, max_tokens=4))
    for r in range(rounds):
        for v in variants[r % len(variants):] + variants[:r % len(variants)]:
            for s in SETTINGS:
                if v == "llama.cpp":
                    res = llama_decode(llama_cpp, llm, ids, tokens, s)
                    c_tps.append(res["c_eval_tokens_per_s"])
                    out = res["tokens"]
                else:
                    with torch.inference_mode():
                        res = gens[v].generate(ids, configs[s])
                    res = {"tokens_per_s": res.stats["tokens_per_s"], "tokens": res.tokens}
                    out = res["tokens"]
                tps[v][s].append(res["tokens_per_s"])
                n_tokens[v][s] = len(out)
                if s == "greedy":
                    greedy_ids[v] = list(out)
                print(f"{spec} round {r + 1} {v:9s} {s:6s} {tps[v][s][-1]:6.2f} tok/s ({len(out)} tokens)", flush=True)
    del llm
    gc.collect()
    med = {v: {s: statistics.median(tps[v][s]) for s in SETTINGS} for v in variants}
    per_token = bytes_per_token(gguf, context=len(ids) + tokens)
    limits = bound(per_token, bw["read_gbps"])
    ref = greedy_ids["llama.cpp"]
    return {
        "base": spec, "gguf": str(gguf), "rounds": rounds, "tokens": tokens, "prompt_tokens": len(ids),
        "decode_tokens_per_s": tps, "median_decode_tokens_per_s": med,
        "llama_cpp_c_eval_tokens_per_s": statistics.median(c_tps),
        "ratio_vs_llama_cpp": {v: {s: med[v][s] / med["llama.cpp"][s] for s in SETTINGS} for v in modes},
        "bytes_per_token": {v: per_token["bytes_per_token"][FORMAT_OF[v]] for v in variants},
        "bound_tokens_per_s": {v: limits[FORMAT_OF[v]] for v in variants},
        "fraction_of_bound": {v: {s: med[v][s] / limits[FORMAT_OF[v]] for s in SETTINGS} for v in variants},
        "completion_tokens": n_tokens, "model_bytes": size,
        "greedy_prefix_equal_to_llama_cpp": {v: next((i for i, (a, b) in enumerate(zip(greedy_ids[v], ref)) if a != b),
                                                     min(len(greedy_ids[v]), len(ref))) for v in modes},
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bases", default="smollm2,qwen2.5-coder-0.5b,qwen2.5-coder-1.5b")
    ap.add_argument("--modes", default=None, help="our weight modes, e.g. none,int8,int4 (default: per base)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--llama-batch", type=int, default=1,
                    help="llama.cpp's prompt batch (n_batch = n_ubatch). 1 by default: on AMX CPUs (Sapphire Rapids) "
                         "a native build segfaults in its AMX matmul on any prompt batch of 4 or more "
                         "(ggml-org/llama.cpp#20824); decode steps are batches of one token either way, so the decode "
                         "figures do not depend on it")
    ap.add_argument("--gib", type=float, default=1.0, help="array size of the bandwidth measurement")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    require_llama_cpp()
    import torch
    from bandwidth_bound import measure_bandwidth

    torch.set_num_threads(args.threads)
    results = {"threads": args.threads, "llama_batch": args.llama_batch, "torch": torch.__version__,
               "machine": platform.processor(),
               "load_average_start": os.getloadavg(), "sampling_full": FULL, "bases": []}
    bw = measure_bandwidth(args.gib)
    print(f"read bandwidth {bw['read_gbps']:.1f} GB/s (best of 1 and 2 threads)", flush=True)
    for spec in args.bases.split(","):
        modes = (args.modes or DEFAULT_MODES.get(spec, "none,int8,int4")).split(",")
        res = measure(spec, modes, args.rounds, args.tokens, args.threads, bw, args.llama_batch)
        results["bases"].append(res)
        print(json.dumps({k: res[k] for k in ("base", "median_decode_tokens_per_s", "ratio_vs_llama_cpp",
                                               "bound_tokens_per_s", "fraction_of_bound",
                                               "greedy_prefix_equal_to_llama_cpp")}, indent=1), flush=True)
        gc.collect()
    bw_end = measure_bandwidth(args.gib)
    bw["read_gbps_end"] = bw_end["read_gbps"]
    results["bandwidth"] = bw
    results["load_average_end"] = os.getloadavg()
    best = max(bw["read_gbps"], bw_end["read_gbps"])  # the machine's capacity: the less disturbed of the two
    for res in results["bases"]:
        scale = best / bw["read_gbps"]
        res["bound_tokens_per_s"] = {v: b * scale for v, b in res["bound_tokens_per_s"].items()}
        res["fraction_of_bound"] = {v: {s: f / scale for s, f in fs.items()} for v, fs in res["fraction_of_bound"].items()}
    print(f"read bandwidth at the end {bw_end['read_gbps']:.1f} GB/s; the bounds use the higher, {best:.1f} GB/s")
    print("\n| base | path | greedy tok/s | full stack tok/s | ours / llama.cpp (greedy, full) | bound tok/s | "
          "of bound (greedy) |")
    print("|---|---|---|---|---|---|---|")
    for res in results["bases"]:
        for v, m in res["median_decode_tokens_per_s"].items():
            ratio = res["ratio_vs_llama_cpp"].get(v)
            rtxt = f"{ratio['greedy']:.2f}x, {ratio['full']:.2f}x" if ratio else "1 (anchor)"
            print(f"| {res['base']} | {'ours ' + FORMAT_OF[v] if v != 'llama.cpp' else 'llama.cpp (gguf)'} | "
                  f"{m['greedy']:.1f} | {m['full']:.1f} | {rtxt} | {res['bound_tokens_per_s'][v]:.1f} | "
                  f"{res['fraction_of_bound'][v]['greedy']:.0%} |")
    if args.out:
        atomic_write_json(args.out, results, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
