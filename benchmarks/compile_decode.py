"""Does ``torch.compile`` of the decode step help on this CPU? (issue 15, the gpt-fast approach: a static KV cache,
the single-token forward compiled, int8/int4 weight-only linears.)

Per base and precision (``[experts] quantize``), in the same run, rounds interleaved (order rotates each round),
medians and ratios:

* ``generator``: our ``Generator`` as it ships (eager Hugging Face forward, ``DynamicCache``, greedy sampler) — the
  baseline, ``none`` (float32) of the same base being "today's float32 path";
* ``eager-static``: a plain greedy loop (argmax) over the same model with a transformers ``StaticCache`` — the loop
  the compiled variants run, eager;
* ``compiled``: that loop with the one-token step ``torch.compile``-d (inductor, ``dynamic=False``, ``fullgraph``);
* ``frozen`` (``--freeze``): the same with inductor's ``freezing`` (weights and the static cache's tensors taken as
  constants of the graph: fp32 weights prepacked for oneDNN). A frozen step is bound to the one cache object it was
  compiled with: ``frozen_new_cache_equal`` records what happens with a second cache object of the same shape.

Each compiled variant's first call is timed apart (``compile_s``); ``--cold-warm`` also times the first call in two
fresh processes sharing one empty ``TORCHINDUCTOR_CACHE_DIR`` (cold, then warm: the FX graph cache across processes).

    OMP_NUM_THREADS=1 python benchmarks/compile_decode.py --bases smollm2 --modes none,int8,int4 --rounds 5 \\
        --out benchmarks/results/compile_decode.json

Greedy tokens of every variant are checked against ``generator``'s (``same_tokens``).

Measured (``benchmarks/results/compile_decode.json``: every run, its command and load average, a summary): compiled
over eager is 1.15-1.33x on SmolLM2 and at most 1.10x on the larger bases, for 50-78 s of compile per process (12 s
with a warm inductor cache), so the ``Generator`` does not compile.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

from asymmetry.atomic import atomic_write_json  # stdlib only: safe before the environment below is set

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

PROMPT = "Write a short paragraph about the history of the city of Rome."
MAX_CACHE = 256  # static cache length (tokens): the short prompt plus the new tokens fit


class StaticLoop:
    """A greedy decode loop over a ``StaticCache``: eager prefill, then one-token steps (compiled or not)."""

    def __init__(self, model, compile_options: dict | None, compiled: bool, max_cache: int = MAX_CACHE,
                 mode: str | None = None):
        import torch
        from transformers import StaticCache

        self.model = model
        self.cache = StaticCache(config=model.config, max_cache_len=max_cache)
        self.max_cache = max_cache
        self.compiled = compiled
        if compiled and mode:
            self.step = torch.compile(self._step, dynamic=False, fullgraph=True, mode=mode)  # mode xor options
        elif compiled:
            self.step = torch.compile(self._step, dynamic=False, fullgraph=True, options=compile_options or None)
        else:
            self.step = self._step
        self.compile_s: float | None = None

    def _step(self, x, cache):  # (1, 1) ids -> (1, V) float logits
        return self.model(input_ids=x, cache=cache, use_cache=True, logits_to_keep=1).logits[:, -1].float()

    def run(self, ids: list[int], tokens: int, cache=None) -> tuple[list[int], float]:
        """Greedy ``tokens`` new tokens after ``ids``; tokens/s of the decode steps (the first compiled call, which
        compiles, is timed into ``compile_s`` and left out)."""
        import torch

        cache = cache if cache is not None else self.cache
        cache.reset()
        with torch.inference_mode():
            out = self.model(input_ids=torch.tensor([ids]), cache=cache, use_cache=True, logits_to_keep=1)
            tok = int(out.logits[0, -1].argmax())
            toks, steps, t0 = [tok], 0, time.perf_counter()
            for _ in range(tokens - 1):
                ts = time.perf_counter()
                logits = self.step(torch.tensor([[tok]]), cache)  # (1, V)
                tok = int(logits[0].argmax())
                toks.append(tok)
                if self.compile_s is None and self.compiled:
                    self.compile_s = time.perf_counter() - ts
                    t0 = time.perf_counter()
                else:
                    steps += 1
        return toks, steps / max(time.perf_counter() - t0, 1e-9)


def placement_of(mode: str):
    from asymmetry.experts import Placement

    return Placement(quantize=mode)


def measure(spec: str, modes: list[str], compile_modes: list[str], rounds: int, tokens: int, freeze: bool,
            compile_mode: str | None = None) -> dict:
    import torch

    from asymmetry.experts.base import load_model
    from asymmetry.sampling import Generator, SamplerConfig

    variants: dict[str, dict] = {}
    models, short = {}, None
    for mode in modes:
        t0 = time.perf_counter()
        base = load_model(spec, placement_of(mode))
        models[mode] = base
        print(f"{spec} {mode}: loaded in {time.perf_counter() - t0:.1f} s", flush=True)
        if short is None:
            tok = base.tokenizer
            short = tok.apply_chat_template([{"role": "user", "content": PROMPT}], add_generation_prompt=True,
                                            tokenize=True)
            short = list(short if isinstance(short, list) else short["input_ids"])
        gen = Generator(base.model, base.tokenizer)
        variants[f"{mode}/generator"] = {"kind": "generator", "mode": mode, "gen": gen}
        if mode in compile_modes:
            variants[f"{mode}/eager-static"] = {"kind": "loop", "mode": mode,
                                                "loop": StaticLoop(base.model, None, False)}
            variants[f"{mode}/compiled"] = {"kind": "loop", "mode": mode,
                                            "loop": StaticLoop(base.model, None, True, mode=compile_mode)}
            if freeze:
                variants[f"{mode}/frozen"] = {"kind": "loop", "mode": mode,
                                              "loop": StaticLoop(base.model, {"freezing": True}, True)}
    greedy = SamplerConfig(temperature=0.0, max_tokens=tokens)
    names = list(variants)
    tps = {n: [] for n in names}
    out_tokens: dict[str, list[int]] = {}
    for name in names:  # warm-up: compiles (timed), first-touch of every weight
        v = variants[name]
        t0 = time.perf_counter()
        if v["kind"] == "generator":
            out_tokens[name] = list(v["gen"].generate(short, greedy).tokens)
        else:
            out_tokens[name] = v["loop"].run(short, tokens)[0]
        print(f"{spec} warm-up {name}: {time.perf_counter() - t0:.1f} s"
              + (f" (compile {v['loop'].compile_s:.1f} s)" if v["kind"] == "loop" and v["loop"].compile_s else ""),
              flush=True)
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            v = variants[name]
            with torch.inference_mode():
                if v["kind"] == "generator":
                    res = v["gen"].generate(short, greedy)
                    toks, speed = list(res.tokens), res.stats["tokens_per_s"]
                else:
                    toks, speed = v["loop"].run(short, tokens)
            tps[name].append(speed)
            out_tokens[name] = toks
            print(f"{spec} round {r + 1} {name:22s} {speed:6.2f} tok/s", flush=True)
    med = {n: statistics.median(v) for n, v in tps.items()}
    baseline = "none/generator" if "none/generator" in med else names[0]
    ref = {m: out_tokens[f"{m}/generator"] for m in modes}

    def same(name: str) -> int:  # greedy tokens in common with the mode's generator, from the start
        a, b = out_tokens[name], ref[variants[name]["mode"]]
        a = a[: len(b)]  # the generator stops at EOS; the loop does not
        return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))

    new_cache = {}
    for name in names:
        if name.endswith("/frozen"):
            from transformers import StaticCache

            loop = variants[name]["loop"]
            other = StaticCache(config=loop.model.config, max_cache_len=loop.max_cache)
            toks, _ = loop.run(short, tokens, cache=other)
            new_cache[name] = toks[: len(ref[variants[name]["mode"]])] == ref[variants[name]["mode"]]
    return {
        "base": spec, "rounds": rounds, "tokens": tokens, "prompt_tokens": len(short), "baseline": baseline,
        "decode_tokens_per_s": tps, "median_decode_tokens_per_s": med,
        "ratio_vs_float32_generator": {n: med[n] / med[baseline] for n in names},
        "ratio_vs_same_mode_generator": {n: med[n] / med[f"{variants[n]['mode']}/generator"] for n in names},
        "compiled_vs_eager_static": {m: med[f"{m}/compiled"] / med[f"{m}/eager-static"] for m in compile_modes},
        "frozen_vs_eager_static": ({m: med[f"{m}/frozen"] / med[f"{m}/eager-static"] for m in compile_modes}
                                   if freeze else None),
        "compile_s": {n: variants[n]["loop"].compile_s for n in names if variants[n]["kind"] == "loop"
                      and variants[n]["loop"].compile_s is not None},
        "same_tokens_as_generator": {n: same(n) for n in names}, "reference_tokens": len(next(iter(ref.values()))),
        "frozen_new_cache_equal": new_cache or None,
    }


def first_call(spec: str, mode: str, cache_dir: str, options: dict | None, exact: bool = False) -> dict:
    """Run one compiled step in a fresh process with ``cache_dir`` as the inductor cache; its load and first-call
    seconds."""
    code = f"""
import json, os, sys, time
sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r})
import torch
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
from compile_decode import StaticLoop, placement_of, PROMPT
from asymmetry.experts.base import load_model
import torch._inductor.config as inductor_config
inductor_config.emulate_precision_casts = {exact!r}
t0 = time.perf_counter()
b = load_model({spec!r}, placement_of({mode!r}))
load = time.perf_counter() - t0
ids = b.tokenizer.apply_chat_template([{{"role": "user", "content": PROMPT}}], add_generation_prompt=True, tokenize=True)
ids = list(ids if isinstance(ids, list) else ids["input_ids"])
loop = StaticLoop(b.model, {options!r}, True)
t0 = time.perf_counter()
toks, tps = loop.run(ids, 8)
print("RESULT", json.dumps({{"load_s": load, "compile_s": loop.compile_s, "tokens_per_s": tps}}))
"""
    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=cache_dir)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if line is None:
        return {"error": proc.stderr[-2000:]}
    return {**json.loads(line[7:]), "process_s": time.perf_counter() - t0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bases", default="smollm2")
    ap.add_argument("--modes", default="none,int8,int4", help="precisions loaded (none = float32)")
    ap.add_argument("--compile-modes", default=None, help="the precisions also run static/compiled (default: all)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--freeze", action="store_true", help="also inductor freezing")
    ap.add_argument("--compile-mode", default=None, help="torch.compile's mode for the compiled variant (e.g. "
                    "max-autotune-no-cudagraphs; default: inductor's default)")
    ap.add_argument("--exact", action="store_true", help="inductor's emulate_precision_casts: round every bf16 cast "
                    "as eager does (without it, fused kernels keep float32 between casts and int4's greedy tokens "
                    "drift from eager's after 15-21 tokens)")
    ap.add_argument("--cold-warm", default=None, help="BASE:MODE[:freeze]: first-call time in a cold and a warm "
                    "process sharing one inductor cache")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    if args.exact:
        import torch._inductor.config as inductor_config

        inductor_config.emulate_precision_casts = True
    results = {"threads": torch.get_num_threads(), "torch": torch.__version__, "machine": platform.processor(),
               "cpu_capability": torch.backends.cpu.get_cpu_capability(), "load_average_start": os.getloadavg(),
               "emulate_precision_casts": args.exact, "compile_mode": args.compile_mode, "argv": sys.argv[1:],
               "bases": []}
    modes = args.modes.split(",")
    cmodes = args.compile_modes.split(",") if args.compile_modes else modes
    for spec in args.bases.split(",") if args.bases else []:
        res = measure(spec, modes, cmodes, args.rounds, args.tokens, args.freeze, args.compile_mode)
        res["load_average_end"] = os.getloadavg()
        results["bases"].append(res)
        print(json.dumps({k: res[k] for k in ("base", "median_decode_tokens_per_s", "ratio_vs_float32_generator",
                                               "compiled_vs_eager_static", "frozen_vs_eager_static", "compile_s",
                                               "same_tokens_as_generator", "frozen_new_cache_equal")}, indent=1),
              flush=True)
        import gc

        gc.collect()
    if args.cold_warm:
        spec, mode, *rest = args.cold_warm.split(":")
        options = {"freezing": True} if rest and rest[0] == "freeze" else None
        with tempfile.TemporaryDirectory(prefix="inductor-") as cache_dir:
            cold = first_call(spec, mode, cache_dir, options, args.exact)
            print("cold", cold, flush=True)
            warm = first_call(spec, mode, cache_dir, options, args.exact)
            print("warm", warm, flush=True)
        results["cold_warm"] = {"base": spec, "mode": mode, "options": options, "cold": cold, "warm": warm,
                                "load_average": os.getloadavg()}
    results["load_average_end"] = os.getloadavg()
    if args.out:
        atomic_write_json(args.out, results)


if __name__ == "__main__":
    main()
