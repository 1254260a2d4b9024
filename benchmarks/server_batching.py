"""``asymmetry serve``: generated tokens/s with C clients at once against the same requests sent one at a time.

A real server (uvicorn on loopback, in this process) and the real ``openai`` client. For each concurrency C the
same C requests (greedy, retrieval off, ``--experts`` taking turns; with several experts of one base, rows of
different adapters share each forward) are first sent one after another, then all at once by C streaming clients; both
rounds run in the same run, back to back. Reported: generated tokens/s of each round and their ratio, time to first
token (p50/p95) at concurrency, the mean rows per decode step, and whether every concurrent answer equals its
one-at-a-time answer (greedy).

    python benchmarks/server_batching.py [--lineup small] [--concurrency 1 4 8] [--max-tokens 32] [--threads 2]
        [--experts general] [--out benchmarks/results/server_batching.json]
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import threading
import time
from pathlib import Path

import openai
import torch
import uvicorn

from asymmetry.config import Config
from asymmetry.engine import Engine
from asymmetry.server import ServerSettings, create_app

QUESTIONS = [
    "Explain in detail how plants make food from sunlight.", "Describe in detail how to comfort a sad friend.",
    "Tell me about the planets of the solar system.", "Explain in detail why the sky is blue.",
    "Describe a typical morning routine in detail.", "Tell me about the life of William Shakespeare.",
    "Explain in detail how water boils.", "Describe in detail why people shake hands.",
]
EXPERTS = ["general"]  # --experts; the small line-up's LoRA experts answer in a few words (trained cloze)


def start(engine: Engine, max_batch: int):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = create_app(engine, ServerSettings(port=port, preload=False, max_batch=max_batch))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    return server, thread, f"http://127.0.0.1:{port}"


def one(client, i: int, max_tokens: int, model: str | None = None, system: str | None = None,
        extra_body: dict | None = None) -> dict:
    """Request ``i`` (question ``i``, expert ``i`` in turn unless ``model`` names one), streamed; its text, time to
    first token, generated tokens and batch statistics. Another server (``server_anchor.py``'s llama.cpp) gets the
    expert's ``system`` prompt as a message and its own ``extra_body``; its tokens are ``max_tokens`` when it stopped
    at the length, else its content chunks (one token each)."""
    t0 = time.perf_counter()
    ttft, text, final, finish = None, [], None, None
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]})
    for chunk in client.chat.completions.create(
            model=model or EXPERTS[i % len(EXPERTS)], messages=messages, max_tokens=max_tokens, temperature=0,
            stream=True, extra_body={"retrieval": False} if extra_body is None else extra_body):
        if chunk.choices and chunk.choices[0].delta.content:
            ttft = ttft or time.perf_counter() - t0
            text.append(chunk.choices[0].delta.content)
        if chunk.choices and chunk.choices[0].finish_reason:
            finish = chunk.choices[0].finish_reason
            final = (chunk.model_extra or {}).get("asymmetry", {}).get("stats")
    if final is None:  # not our server: no batch statistics
        final = {"completion_tokens": max_tokens if finish == "length" else len(text)}
    return {"text": "".join(text), "ttft": ttft, "tokens": final["completion_tokens"],
            "rows": final.get("max_batch_rows", 1), "shared": final.get("shared_steps", 0)}


def round_of(client, c: int, max_tokens: int, concurrent: bool, **request) -> tuple[float, list[dict]]:
    """Requests 0..c-1 one after another or all at once; the wall time and each request's result (``request``: the
    keywords of :func:`one`)."""
    results: list[dict | None] = [None] * c
    t0 = time.perf_counter()
    if concurrent:
        threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, one(client, i, max_tokens, **request)))
                   for i in range(c)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    else:
        for i in range(c):
            results[i] = one(client, i, max_tokens, **request)
    return time.perf_counter() - t0, results


def ttft_percentiles(results: list[dict]) -> tuple[float, float]:
    """Time to first token p50 and p95 of a round's results, in seconds."""
    ttfts = sorted(r["ttft"] for r in results if r["ttft"] is not None)
    return round(statistics.median(ttfts), 3), round(ttfts[min(len(ttfts) - 1, int(0.95 * len(ttfts)))], 3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lineup", default="small")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8])
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--experts", nargs="+", default=EXPERTS)
    ap.add_argument("--out", default="benchmarks/results/server_batching.json")
    args = ap.parse_args()
    EXPERTS[:] = args.experts
    torch.set_num_threads(args.threads)
    engine = Engine(Config.from_dict({"experts": {"lineup": args.lineup}}))
    server, thread, url = start(engine, max_batch=max(args.concurrency))
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=1800)
    for i in range(len(EXPERTS)):  # load the base and attach every adapter before timing
        one(client, i, 2)
    rows = []
    try:
        for c in args.concurrency:
            serial_s, serial = round_of(client, c, args.max_tokens, concurrent=False)
            batch_s, batched = round_of(client, c, args.max_tokens, concurrent=True)
            serial_tps = sum(r["tokens"] for r in serial) / serial_s
            batch_tps = sum(r["tokens"] for r in batched) / batch_s
            p50, p95 = ttft_percentiles(batched)
            row = {
                "concurrency": c, "serial_tokens_per_s": round(serial_tps, 2),
                "concurrent_tokens_per_s": round(batch_tps, 2), "ratio": round(batch_tps / serial_tps, 2),
                "ttft_p50_s": p50, "ttft_p95_s": p95,
                "max_batch_rows": max(r["rows"] for r in batched),
                "same_text_as_serial": sum(a["text"] == b["text"] for a, b in zip(serial, batched)),
                "serial_s": round(serial_s, 2), "concurrent_s": round(batch_s, 2),
            }
            rows.append(row)
            print(json.dumps(row))
    finally:
        server.should_exit = True
        thread.join(30)
    out = {"lineup": args.lineup, "experts": args.experts, "max_tokens": args.max_tokens, "threads": args.threads, "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
