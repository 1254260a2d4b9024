"""``asymmetry serve``: the OpenAI-compatible server (``asymmetry/server.py``) with continuous batching."""

from __future__ import annotations

import argparse
import os

from asymmetry.engine import Engine
from asymmetry.serve_ray import serve_on_ray
from asymmetry.server import ServerSettings, serve

DESCRIPTION = """\
An OpenAI-compatible HTTP server (FastAPI + uvicorn, streaming by server-sent events) over the assistant: every
request is routed to an expert, answered with Wikipedia passages and decoded by our sampler; concurrent requests
join one running batch per base model between decode steps (continuous batching).

endpoints:
  GET  /v1/models             the experts, auto (the router picks), base (the bare default base), the embedder
  POST /v1/chat/completions   messages, stream, max_tokens/max_completion_tokens, temperature, top_p, seed, stop,
                              n=1, response_format (json_object/json_schema), stream_options.include_usage,
                              logprobs (true) with top_logprobs (0-20)
  POST /v1/completions        a raw prompt continued as it is (no template, no retrieval); logprobs (0-5)
  POST /v1/embeddings         the shared all-MiniLM-L6-v2 embedder
  GET  /health, GET /metrics  liveness; Prometheus metrics

logprobs are the model's log-softmax for each generated token after CFG/mixture combination and before penalties,
grammar, temperature and truncation (the distribution the sampler starts from, not the truncated one it draws
from): greedy decoding without penalties picks the top alternative. Special and control tokens never appear.

extension body fields: mirostat, mirostat_tau, mirostat_eta, cfg_scale, negative_prompt, grammar (GBNF), min_p,
top_k, repeat_penalty, retrieval (bool), k, mixture. Responses carry an "asymmetry" object (expert, confidence,
sources, sampler stats); a stream sends it with its last chunk.

Binds 127.0.0.1 by default; another address needs --api-key (or $ASYMMETRY_API_KEY). Ctrl-C/SIGTERM stops
accepting, gives in-flight requests --shutdown-timeout seconds, cancels the rest and exits.

--ray: the same server as a Ray Serve application (pip install -e '.[ray]'), on $RAY_ADDRESS or a private local
Ray: an ingress deployment (this HTTP layer: the same routes, errors and options; routing, embeddings) and one
deployment per base model, each replica holding that base and attaching its experts' adapters on demand
(serve.multiplexed by model name); --ray-replicas replicas per base, --ray-cpus CPUs each (a GPU each when the
cluster has GPUs); --max-batch and --max-waiting apply per replica. Ctrl-C/SIGTERM shuts Ray Serve down."""


def register(sub) -> None:
    p = sub.add_parser("serve", help="OpenAI-compatible HTTP server with continuous batching",
                       description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog='example: asymmetry serve --port 8000 & curl localhost:8000/v1/chat/completions '
                       '-d \'{"model": "auto", "messages": [{"role": "user", "content": "Who was Ada Lovelace?"}]}\'')
    p.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS, help="TOML config file (as before the command)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; others need --api-key)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--api-key", default=os.environ.get("ASYMMETRY_API_KEY"), metavar="KEY",
                   help="require 'Authorization: Bearer KEY' (default $ASYMMETRY_API_KEY)")
    p.add_argument("--max-batch", type=int, default=16, metavar="N",
                   help="rows decoded together per base model (a CFG request takes 2; default 16)")
    p.add_argument("--max-waiting", type=int, default=64, metavar="N",
                   help="requests that may wait for the batch; more get 429 with Retry-After (default 64)")
    p.add_argument("--max-tokens-cap", type=int, default=1024, metavar="N",
                   help="largest max_tokens a request may ask for (default 1024)")
    p.add_argument("--max-body-bytes", type=int, default=1_000_000, metavar="N", help="request size limit")
    p.add_argument("--shutdown-timeout", type=float, default=10.0, metavar="S",
                   help="seconds in-flight requests get to finish at Ctrl-C/SIGTERM (default 10)")
    p.add_argument("--no-preload", action="store_true",
                   help="start at once; load the router, index and models on the first request")
    p.add_argument("--ray", action="store_true",
                   help="serve as a Ray Serve application: one deployment per base model, experts multiplexed")
    p.add_argument("--ray-replicas", type=int, default=1, metavar="N", help="--ray: replicas per base model (default 1)")
    p.add_argument("--ray-cpus", type=float, default=1.0, metavar="C",
                   help="--ray: CPUs per replica (default 1; a GPU each instead when the cluster has GPUs)")
    p.set_defaults(func=cmd_serve)


def cmd_serve(args) -> int:
    settings = ServerSettings(host=args.host, port=args.port, api_key=args.api_key, max_batch=args.max_batch,
                              max_waiting=args.max_waiting, max_tokens_cap=args.max_tokens_cap,
                              max_body_bytes=args.max_body_bytes, preload=not args.no_preload,
                              shutdown_timeout_s=args.shutdown_timeout)
    if args.ray:
        serve_on_ray(args.cfg, settings, replicas=args.ray_replicas, cpus=args.ray_cpus)
        return 0
    serve(Engine(args.cfg), settings, access_log=args.verbose)
    return 0
