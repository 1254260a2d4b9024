"""Does a 7B Q4_K_M GGUF load and decode on a 24 GB machine, and what does it peak at? (Issue 15: a user's own 7B
GGUF must load straight into int4/int8 weights, never through a float32 copy.)

No 7B GGUF is on the package index, so this writes one: Qwen2.5-7B's shapes (28 layers, width 3,584, feed-forward
18,944, 28 query heads, 4 KV heads, an untied head) with, tensor for tensor, the block types of the default 1.5B's
Q4_K_M file (Q4_K, Q6_K where it has Q6_K; both have 28 layers) and its metadata and tokenizer (151,936 tokens). The
blocks are random but well formed (small scales, so activations stay finite): the load and decode paths, the memory
and the speed are a real 7B's; the text is noise. Written once to ``--out-gguf`` (4.4 GB; atomic).

Then ``asymmetry generate --model FILE`` runs in a child process under the default settings (``quantize = "auto"``:
int4 from a mostly-4-bit GGUF of 1B+ parameters), and its peak resident memory (``ru_maxrss`` of the child, which
counts the memory-mapped GGUF's pages too, and its peak ``RssAnon``, its own memory) and ``--json`` stats are
recorded.

    python benchmarks/large_gguf_load.py --out-gguf /tmp/qwen2.5-7b-shaped-q4_k_m.gguf \\
        --out benchmarks/results/large_gguf_load.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from asymmetry.atomic import atomic_path, atomic_write_json

SHAPE_7B = {"embedding_length": 3584, "feed_forward_length": 18944, "attention.head_count": 28,
            "attention.head_count_kv": 4}
BLOCK = 256  # weights a Q4_K / Q6_K block
BLOCK_BYTES = {"Q4_K": 144, "Q6_K": 210}


def _blocks(rows: int, cols: int, kind: str, rng: np.random.Generator) -> np.ndarray:
    """``rows`` x ``cols`` weights as random, well-formed ``kind`` blocks: (rows, cols / 256 * block bytes) uint8."""
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    qtype = GGMLQuantizationType[kind]
    assert GGML_QUANT_SIZES[qtype] == (BLOCK, BLOCK_BYTES[kind])
    n = rows * cols // BLOCK
    data = rng.integers(0, 256, size=(n, BLOCK_BYTES[kind]), dtype=np.uint8)
    d = rng.uniform(2e-5, 1e-4, size=n).astype(np.float16).view(np.uint8).reshape(n, 2)
    if kind == "Q4_K":  # d, dmin (f16), 12 bytes of 6-bit scales and mins, 128 bytes of nibbles
        data[:, 0:2] = d
        data[:, 2:4] = (rng.uniform(0, 2e-5, size=n).astype(np.float16)).view(np.uint8).reshape(n, 2)
    else:  # Q6_K: 128 bytes low nibbles, 64 bytes high bits, 16 int8 scales, d (f16) last
        data[:, 192:208] = rng.integers(-32, 32, size=(n, 16), dtype=np.int8).view(np.uint8)
        data[:, 208:210] = d
    return data.reshape(rows, cols // BLOCK * BLOCK_BYTES[kind])


def write_gguf(template: Path, out: Path, seed: int = 0) -> None:
    """A 7B-shaped copy of ``template`` (the 1.5B's Q4_K_M GGUF): its metadata with the 7B's dimensions, its block
    type per tensor, random blocks."""
    from gguf import GGUFReader, GGUFValueType, GGUFWriter

    reader = GGUFReader(str(template))
    arch = reader.fields["general.architecture"].contents()
    rng = np.random.default_rng(seed)
    width, ffn = SHAPE_7B["embedding_length"], SHAPE_7B["feed_forward_length"]
    kv_out = width // SHAPE_7B["attention.head_count"] * SHAPE_7B["attention.head_count_kv"]
    vocab = len(reader.fields["tokenizer.ggml.tokens"].data)
    out_of = {"attn_q": width, "attn_k": kv_out, "attn_v": kv_out, "attn_output": width, "ffn_gate": ffn,
              "ffn_up": ffn, "ffn_down": width}
    in_of = {**{k: width for k in out_of}, "ffn_down": ffn}
    with atomic_path(out, suffix=".gguf") as tmp:
        writer = GGUFWriter(str(tmp), arch)
        for key, field in reader.fields.items():
            if key.startswith("GGUF.") or key == "general.architecture":
                continue
            value = field.contents()
            short = key.removeprefix(f"{arch}.")
            if short in SHAPE_7B:
                value = SHAPE_7B[short]
            elif key == "general.size_label":
                value = "7B"
            elif key == "general.name":
                value = "Qwen2.5 7B-shaped random Q4_K_M (asymmetry benchmark)"
            kind = field.types[0]
            writer.add_key_value(key, value, kind, sub_type=field.types[-1] if kind == GGUFValueType.ARRAY else None)
        for t in reader.tensors:
            name, kind = t.name, t.tensor_type.name
            part = name.split(".")[-2] if name.startswith("blk.") else name.split(".")[0]
            if name.endswith("norm.weight"):
                writer.add_tensor(name, np.ones(width, dtype=np.float32))
            elif name.endswith(".bias"):
                writer.add_tensor(name, np.zeros(out_of[part], dtype=np.float32))
            elif name in ("token_embd.weight", "output.weight"):
                writer.add_tensor(name, _blocks(vocab, width, kind, rng), raw_dtype=t.tensor_type)
            else:
                writer.add_tensor(name, _blocks(out_of[part], in_of[part], kind, rng), raw_dtype=t.tensor_type)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file(progress=False)
        writer.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out-gguf", default="/tmp/qwen2.5-7b-shaped-q4_k_m.gguf")
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    path = Path(args.out_gguf)
    if not path.is_file():
        t0 = time.perf_counter()
        write_gguf(_template(), path)
        print(f"wrote {path} ({path.stat().st_size / 1e9:.2f} GB) in {time.perf_counter() - t0:.0f} s", flush=True)
    cmd = [sys.executable, "-m", "asymmetry", "generate", "--model", str(path), "The capital of France is",
           "--max-tokens", str(args.tokens), "--json"]
    t0 = time.perf_counter()
    child = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "HF_HUB_OFFLINE": "1"})
    peak_anon = [0]
    watcher = threading.Thread(target=_watch_anon, args=(child, peak_anon), daemon=True)
    watcher.start()
    out, err = child.communicate()
    wall = time.perf_counter() - t0
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if child.returncode != 0:
        sys.exit(f"generate failed ({child.returncode}): {err[-2000:]}")
    stats = json.loads(out)["stats"]
    result = {"gguf": str(path), "gguf_bytes": path.stat().st_size, "command": " ".join(cmd[1:]),
              "wall_s": wall, "peak_rss_gb": peak_kb * 1024 / 1e9, "peak_anon_gb": peak_anon[0] / 1e9,
              "stats": stats, "cpu_capability": _capability(), "load_average": os.getloadavg()}
    print(json.dumps(result, indent=1))
    if args.out:
        atomic_write_json(args.out, result)


def _watch_anon(child: subprocess.Popen, peak: list) -> None:
    """The child's largest RssAnon (its own memory: ``peak_rss_gb`` also counts the memory-mapped GGUF's pages, which
    the kernel can drop), sampled every 50 ms."""
    status = Path(f"/proc/{child.pid}/status")
    while child.poll() is None:
        try:
            line = next(x for x in status.read_text().splitlines() if x.startswith("RssAnon:"))
            peak[0] = max(peak[0], int(line.split()[1]) * 1024)
        except (OSError, StopIteration, ValueError):
            pass
        time.sleep(0.05)


def _template() -> Path:
    """The default 1.5B's GGUF, joined from its packages (the path the pool loads it from)."""
    from asymmetry.experts.base import _source

    return Path(_source("qwen2.5-coder-1.5b")[1])


def _capability() -> str:
    import torch

    return torch.backends.cpu.get_cpu_capability()


if __name__ == "__main__":
    main()
