"""The memory-bandwidth bound of decoding: every decode step reads every weight once, so tokens/s can be no higher than
(this machine's measured read bandwidth) / (bytes of weights read per token).

Bandwidth: a sum over a large float32 array (``--gib``, far beyond the caches) with torch at 1 and 2 threads, the
best of ``--repeats`` passes (the least disturbed by other jobs on the machine), and a copy for comparison.

Bytes per token, per base and weight format, counted from the base's GGUF tensor table (shapes and types):

* ``fp32`` / ``bf16``: every linear, the output head and the norms at 4 / 2 bytes a value (``[experts] dtype``).
* ``int8``: our weight-only int8 linears (1 byte a weight + a bf16 scale per output channel), the output head int8
  too (``experts/quantize.py``; a tied one through an int8 copy of the embedding), norms and biases float32.
* ``int4``: our int4 linears (half a byte a weight + a bf16 scale and zero point per group), int8 where the int4
  kernel cannot take the shape, the head int8 (a tied one through its int8 copy).
* ``int8-fphead`` / ``int4-fphead``: the same with the head float32 (``[experts] quantize_head = false``).
* ``gguf``: the file's own quantization (Q4_1, Q4_K/Q6_K, ...) as llama.cpp reads it: each tensor's stored bytes.

The input embedding costs one row a token; a head tied to it (no ``output.weight``) is read whole (in float for
fp32, bf16 and the -fphead formats, as its int8 copy for int8 and int4). The KV cache read
at ``--context`` tokens is added (float32 for ours, f16 for llama.cpp); it is small at these lengths.

    python benchmarks/bandwidth_bound.py [--bases smollm2,qwen2.5-coder-0.5b,qwen2.5-coder-1.5b] [--gib 2]
        [--out benchmarks/results/bandwidth_bound.json]
"""

from __future__ import annotations

import argparse
import json
import os
import time

from asymmetry.atomic import atomic_write_json  # stdlib only: safe before the environment below is set

os.environ.setdefault("HF_HUB_OFFLINE", "1")

BASES = ["smollm2", "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"]
FORMATS = ["fp32", "bf16", "int8", "int4", "int8-fphead", "int4-fphead", "gguf"]
LINEARS = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
GB = 1e9


def measure_bandwidth(gib: float = 2.0, repeats: int = 7, threads: tuple[int, ...] = (1, 2)) -> dict:
    """Read bandwidth (GB/s) of a sum over ``gib`` GiB of float32 at each thread count, and a copy (read + write
    bytes); the best of ``repeats`` passes each."""
    import torch

    before = torch.get_num_threads()
    x = torch.ones(int(gib * (1 << 30)) // 4, dtype=torch.float32)
    y = torch.empty_like(x)
    nbytes = x.numel() * 4
    out: dict = {"array_bytes": nbytes}
    try:
        for n in threads:
            torch.set_num_threads(n)
            best = min(_timed(x.sum) for _ in range(repeats))
            out[f"read_gbps_{n}t"] = nbytes / best / GB
        best = min(_timed(y.copy_, x) for _ in range(repeats))
        out[f"copy_gbps_{threads[-1]}t"] = 2 * nbytes / best / GB
    finally:
        torch.set_num_threads(before)
    out["read_gbps"] = max(v for k, v in out.items() if k.startswith("read_gbps_"))
    return out


def _timed(fn, *args) -> float:
    t = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t


def _field(reader, key: str):
    f = reader.fields[key]
    value = f.parts[f.data[0]]
    return bytes(value).decode() if f.types and f.types[0].name == "STRING" else value.tolist()[0]


def bytes_per_token(gguf_path, context: int = 128) -> dict:
    """Bytes of weights (and KV cache at ``context`` tokens) read per decoded token, per format in ``FORMATS``."""
    import gguf

    from asymmetry.experts.quantize import int4_group

    r = gguf.GGUFReader(str(gguf_path))
    arch = _field(r, "general.architecture")
    layers = _field(r, f"{arch}.block_count")
    width = _field(r, f"{arch}.embedding_length")
    heads, kv_heads = _field(r, f"{arch}.attention.head_count"), _field(r, f"{arch}.attention.head_count_kv")
    tensors = {t.name: t for t in r.tensors}
    embd = tensors["token_embd.weight"]
    head = tensors.get("output.weight", embd)  # tied: the embedding matrix is the head, read whole
    vocab = int(embd.shape[1])
    size = dict.fromkeys(FORMATS, 0.0)
    params = 0
    for name, t in tensors.items():
        n = int(t.n_elements)
        params += n
        if name == "token_embd.weight":
            continue  # counted below: one row a token (and whole when it is the head)
        kind = name.split(".")[-2] if name.startswith("blk.") else name
        is_linear = kind in LINEARS and name.endswith(".weight")
        size["gguf"] += int(t.n_bytes)
        size["fp32"] += 4 * n
        size["bf16"] += 2 * n
        if not is_linear and name != "output.weight":
            for f in ("int8", "int4", "int8-fphead", "int4-fphead"):
                size[f] += 4 * n  # norms and biases stay float32
            continue
        k, nout = int(t.shape[0]), int(t.shape[1])  # GGUF lists the inner (input) dimension first
        int8 = n + 2 * nout
        if name == "output.weight":  # the untied head: int8 in both modes, or float32 with quantize_head = false
            size["int8"] += int8
            size["int4"] += int8
            size["int8-fphead"] += 4 * n
            size["int4-fphead"] += 4 * n
            continue
        g = int4_group(nout, k)
        int4 = n / 2 + (k // g) * nout * 2 * 2 if g else int8
        size["int8"] += int8
        size["int8-fphead"] += int8
        size["int4"] += int4
        size["int4-fphead"] += int4
    row = int(embd.n_elements) // vocab
    for f, per in (("fp32", 4), ("bf16", 2), ("int8", 4), ("int4", 4), ("int8-fphead", 4), ("int4-fphead", 4)):
        size[f] += per * row  # the input embedding's row
        if head is embd:  # the tied head, read whole: as its int8 copy (a bf16 scale a row) in int8 and int4
            size[f] += int(embd.n_elements) + 2 * vocab if f in ("int8", "int4") else per * int(embd.n_elements)
    size["gguf"] += int(embd.n_bytes) // vocab + (int(embd.n_bytes) if head is embd else 0)
    kv_per_token = 2 * layers * kv_heads * (width // heads)  # K and V values per cached token
    kv = {f: kv_per_token * context * (2 if f in ("bf16", "gguf") else 4) for f in FORMATS}
    return {"gguf": str(gguf_path), "architecture": arch, "parameters": params, "layers": layers,
            "tied_head": head is embd, "context": context, "weight_bytes": size, "kv_bytes": kv,
            "bytes_per_token": {f: size[f] + kv[f] for f in FORMATS}}


def bound(row: dict, gbps: float) -> dict:
    """Tokens/s the read bandwidth ``gbps`` allows for each format of a ``bytes_per_token`` row."""
    return {f: gbps * GB / b for f, b in row["bytes_per_token"].items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bases", default=",".join(BASES))
    ap.add_argument("--gib", type=float, default=2.0, help="size of the array read to measure bandwidth")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--context", type=int, default=128, help="tokens in the KV cache read per step")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    from asymmetry.experts.base import builtin_gguf

    bw = measure_bandwidth(args.gib, args.repeats)
    print(f"read bandwidth: {bw['read_gbps_1t']:.1f} GB/s (1 thread), {bw['read_gbps_2t']:.1f} GB/s (2 threads); "
          f"copy {bw['copy_gbps_2t']:.1f} GB/s (read + write); best of {args.repeats} over {args.gib} GiB")
    rows = []
    print("\n| base | format | MB read per token | bound tokens/s |")
    print("|---|---|---|---|")
    for spec in args.bases.split(","):
        row = bytes_per_token(builtin_gguf(spec), args.context)
        row["base"] = spec
        row["bound_tokens_per_s"] = bound(row, bw["read_gbps"])
        rows.append(row)
        for f in FORMATS:
            print(f"| {spec} | {f} | {row['bytes_per_token'][f] / 1e6:.0f} | {row['bound_tokens_per_s'][f]:.1f} |")
    if args.out:
        atomic_write_json(args.out, {"bandwidth": bw, "context": args.context, "rows": rows}, indent=1)
    print(json.dumps({"bandwidth": bw}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
