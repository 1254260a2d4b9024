"""The outside anchor for ``asymmetry serve``: llama-cpp-python's own OpenAI-compatible server (``python -m
llama_cpp.server``, the ``bench`` extra) on the same GGUF file, sent the same requests at each concurrency, in the
same run as ours, greedy and with CFG on (llama.cpp's server has no CFG).

Our server runs in this process on the line-up's expert (``server_batching.py``'s server, requests and clients;
retrieval off); llama.cpp's in a subprocess on a free loopback port with the same thread count and
``--interrupt_requests False`` (its default cuts a running stream short when another request arrives). llama.cpp gets
the system message ours renders (the expert's system prompt and the brief-answer instruction), and a repeat penalty
of 1 so greedy is plain greedy on both sides. It keeps the KV cache of its last prompt and reuses the common prefix
(system prompt and template; ours prefills each request whole); an untimed one-token request of another question
before every round keeps a repeated round from finding its whole prompt there. At each concurrency C the three
rounds (llama.cpp, ours greedy, ours with CFG) run back to back, their order rotating; each round sends requests
0..C-1 at once by C streaming clients; ``--repeats`` times. Reported: generated tokens/s of the median round of each
server (time to first token p50/p95 of that round), and our ratio to llama.cpp.

    pip install -e '.[bench]'      # builds llama-cpp-python (see README, Benchmarks)
    python benchmarks/server_anchor.py [--lineup small] [--expert general] [--concurrency 1 4 8 16] [--max-tokens 48]
        [--threads 2] [--cfg-scale 1.5] [--repeats 3] [--out benchmarks/results/server_anchor.json]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import openai
import torch
from llamacpp_anchor import require_llama_cpp  # this folder's scripts (the script's folder is on sys.path)
from server_batching import EXPERTS, QUESTIONS, one, round_of, start, ttft_percentiles

from asymmetry.atomic import atomic_write_json
from asymmetry.config import Config
from asymmetry.engine import BRIEF_INSTRUCTION, Engine
from asymmetry.experts.base import BUILTIN_BASES, builtin_gguf


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_llama_server(gguf: Path, threads: int, log: Path, timeout: float = 300) -> tuple[subprocess.Popen, str]:
    """``python -m llama_cpp.server`` on ``gguf`` at a free loopback port; returns once it answers ``/v1/models``."""
    port = free_port()
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1", "--port", str(port),
           "--n_threads", str(threads), "--n_threads_batch", str(threads), "--n_ctx", "2048",
           "--interrupt_requests", "False"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"llama_cpp.server exited with {proc.returncode}; its log: {log}")
        try:
            urllib.request.urlopen(url + "/v1/models", timeout=2).read()
            return proc, url
        except OSError:
            time.sleep(0.5)
    proc.terminate()
    raise SystemExit(f"llama_cpp.server did not answer within {timeout:.0f} s; its log: {log}")


def summary(name: str, wall_s: float, results: list[dict]) -> dict:
    p50, p95 = ttft_percentiles(results)
    return {"server": name, "tokens_per_s": round(sum(r["tokens"] for r in results) / wall_s, 2),
            "tokens": sum(r["tokens"] for r in results), "wall_s": round(wall_s, 2), "ttft_p50_s": p50,
            "ttft_p95_s": p95, "max_batch_rows": max(r["rows"] for r in results)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lineup", default="small")
    ap.add_argument("--expert", default="general")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8, 16])
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cfg-scale", type=float, default=1.5)
    ap.add_argument("--repeats", type=int, default=3, help="rounds per server and concurrency; the median is reported")
    ap.add_argument("--out", default="benchmarks/results/server_anchor.json")
    args = ap.parse_args(argv)
    require_llama_cpp()
    load_start = os.getloadavg()
    EXPERTS[:] = [args.expert]
    torch.set_num_threads(args.threads)
    engine = Engine(Config.from_dict({"experts": {"lineup": args.lineup}}))
    spec = next(e for e in engine.config.experts.specs() if e.name == args.expert)
    if spec.base not in BUILTIN_BASES:
        raise SystemExit(f"expert {args.expert!r} is on {spec.base!r}, not a built-in base with a GGUF file")
    gguf = builtin_gguf(spec.base)
    # CFG doubles a request's rows: room for every row of the largest round, so no request waits for a slot
    server, thread, url = start(engine, max_batch=2 * max(args.concurrency))
    log = Path(tempfile.gettempdir()) / f"llama_cpp_server_{os.getpid()}.log"
    proc, llama_url = start_llama_server(gguf, args.threads, log)
    ours = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=1800)
    theirs = openai.OpenAI(base_url=llama_url + "/v1", api_key="unused", max_retries=0, timeout=1800)
    rounds = {
        # our prompt without retrieval: the expert's system prompt followed by the brief-answer instruction
        "llama.cpp": (theirs, {"model": "gguf", "system": f"{spec.system_prompt} {BRIEF_INSTRUCTION}",
                               "extra_body": {"repeat_penalty": 1.0}}),
        "ours": (ours, {}),
        "ours_cfg": (ours, {"extra_body": {"retrieval": False, "cfg_scale": args.cfg_scale}}),
    }
    for client, request in rounds.values():  # load the models, first-call allocations; the last question, so
        one(client, len(QUESTIONS) - 1, 2, **request)  # llama.cpp's prompt cache holds no timed request's prompt
    rows = []
    try:
        names = list(rounds)
        for n, c in enumerate(args.concurrency):
            runs: dict[str, list[dict]] = {name: [] for name in names}
            for rep in range(args.repeats):
                k = (n + rep) % len(names)
                for name in names[k:] + names[:k]:
                    client, request = rounds[name]
                    one(client, len(QUESTIONS) - 1, 1, **request)  # untimed: llama.cpp's cache holds no prompt of the round
                    wall_s, results = round_of(client, c, args.max_tokens, concurrent=True, **request)
                    runs[name].append(summary(name, wall_s, results) | {"texts": [r["text"] for r in results]})
            row = {"concurrency": c, "repeats": args.repeats}
            for name, done in runs.items():  # the median round by tokens/s, and every round's rate
                done.sort(key=lambda d: d["tokens_per_s"])
                row[name] = done[len(done) // 2] | {"all_tokens_per_s": [d["tokens_per_s"] for d in done]}
            for name in ("ours", "ours_cfg"):
                row[f"ratio_{name}_vs_llama_cpp"] = round(row[name]["tokens_per_s"] / row["llama.cpp"]["tokens_per_s"], 2)
            row["same_greedy_text"] = sum(a == b for a, b in zip(row["ours"]["texts"], row["llama.cpp"]["texts"]))
            rows.append(row)
            print(json.dumps({k: ({kk: vv for kk, vv in v.items() if kk != "texts"} if isinstance(v, dict) else v)
                              for k, v in row.items()}), flush=True)
    finally:
        server.should_exit = True
        thread.join(30)
        proc.terminate()
        proc.wait(30)
    print("\n| clients at once | llama.cpp server tok/s | ours tok/s (ratio) | ours with CFG tok/s (ratio) | "
          "time to first token p50 llama.cpp / ours / ours CFG |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['concurrency']} | {r['llama.cpp']['tokens_per_s']:.1f} | {r['ours']['tokens_per_s']:.1f} "
              f"(**{r['ratio_ours_vs_llama_cpp']:.2f}x**) | {r['ours_cfg']['tokens_per_s']:.1f} "
              f"({r['ratio_ours_cfg_vs_llama_cpp']:.2f}x) | {r['llama.cpp']['ttft_p50_s']:.2f} / "
              f"{r['ours']['ttft_p50_s']:.2f} / {r['ours_cfg']['ttft_p50_s']:.2f} s |")
    atomic_write_json(args.out, {"lineup": args.lineup, "expert": args.expert, "base": spec.base, "gguf": str(gguf),
                                 "max_tokens": args.max_tokens, "threads": args.threads, "cfg_scale": args.cfg_scale,
                                 "load_average_start": load_start, "load_average_end": os.getloadavg(), "rows": rows}, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
