"""``asymmetry serve --ray``: the real ``openai`` client against a real Ray Serve application on a local Ray.

The module deploys the application once (``asymmetry/serve_ray.py``: the ingress with the shared HTTP layer, one
deployment per base of the ``small`` line-up) on a private local Ray (2 CPUs, 256 MB object store, loopback only)
and shuts Serve down at the end (and the Ray it started). Every call has a client timeout, so nothing waits forever.
Answers are greedy, so a replica's answer is compared with the same request decoded by an engine in this process.
"""

from __future__ import annotations

import signal
import socket
import sys
import time

import httpx
import openai
import pytest

# The single-process server's client-side tests, run here against the Ray deployment: the same API (tests/server has
# no __init__.py, so pytest puts it on sys.path and test_server imports as a top-level module).
from test_server import (  # noqa: F401  (collected again in this module, with its client and url)
    ask,
    signal_during_a_stream,
    test_a_client_that_disconnects_frees_its_rows,
    test_cfg_and_mirostat_extensions_reach_the_sampler,
    test_chat_answers_with_usage_and_the_asymmetry_object,
    test_completions_continue_a_raw_prompt_and_embeddings_embed,
    test_errors_are_openai_error_objects,
    test_json_schema_response_format_parses,
    test_langchain_chat_openai_talks_to_the_server,
    test_metrics_count_requests_tokens_batches_and_first_tokens,
    test_stream_gives_the_same_text_then_finish_extension_and_usage,
    test_two_concurrent_requests_share_decode_steps_and_keep_their_answers,
)

from asymmetry.cli import build_parser, main
from asymmetry.cluster import connect
from asymmetry.config import Config
from asymmetry.engine import Engine, Request
from asymmetry.errors import AsymmetryError
from asymmetry.serve_ray import APP_NAME, build_app, deployment_name
from asymmetry.server import ServerSettings

SMALL = {"experts": {"lineup": "small"}}
SMOLLM = deployment_name(0, "smollm2")
QWEN = deployment_name(1, "qwen2.5-coder-0.5b")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def url():
    import ray
    from ray import serve

    ours = not ray.is_initialized()  # a Ray this module starts is stopped by it; one already running is kept
    connect(num_cpus=2, object_store_mb=256)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        # half a CPU per base replica: both bases fit with room left for other Ray work of the session
        serve.run(build_app(Config.from_dict(SMALL), ServerSettings(port=port, preload=False), cpus=0.5),
                  name=APP_NAME, route_prefix="/")
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        if ours:
            ray.shutdown()


@pytest.fixture(scope="module")
def client(url):
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=300)


def test_a_ray_serve_deployment_answers_the_openai_client_as_the_engine_does(client, pool):
    ids = [m.id for m in client.models.list().data]
    assert ids == ["auto", "science", "commonsense", "general", "scholar", "base", "all-MiniLM-L6-v2"]
    r = ask(client, "Name a planet of the solar system.")
    ext = r.model_extra["asymmetry"]
    assert r.object == "chat.completion" and r.model == "general" and ext["expert"] == "general"
    # the same request decoded by an engine in this process (what the single-process server runs)
    local = Engine(Config.from_dict(SMALL), pool=pool)
    plan = local.plan(Request(question="Name a planet of the solar system.", expert="general", retrieval=False,
                              sampler={"max_tokens": 10, "temperature": 0}))
    stream = local.stream(plan)
    assert r.choices[0].message.content == stream.text() and r.choices[0].message.content.strip()
    assert r.usage.prompt_tokens == stream.answer.stats["prompt_tokens"] == ext["stats"]["prompt_tokens"]
    assert r.usage.completion_tokens == stream.answer.stats["completion_tokens"]


def test_auto_is_routed_at_the_ingress_and_experts_load_on_demand_on_their_base(client, url):
    r = client.chat.completions.create(model="auto", max_tokens=8, temperature=0, messages=[
        {"role": "user", "content": "Who developed general relativity?"}])  # the router picks a SmolLM2 expert
    ext = r.model_extra["asymmetry"]
    assert ext["expert"] in ("science", "commonsense", "general") and ext["confidence"] is not None
    assert ext["sources"] and all(s["title"] and "url" in s for s in ext["sources"])
    ask(client, "Name a colour.", model="commonsense", max_tokens=3)
    health = httpx.get(url + "/health", timeout=60).json()
    smollm, qwen = health["bases"][SMOLLM], health["bases"][QWEN]
    assert smollm["base"] == "smollm2" and {ext["expert"], "commonsense"} <= set(smollm["experts"])
    assert qwen["experts"] == []  # scholar's base was never asked for: its replica loaded nothing
    assert health["batch"]["steps"] == smollm["batch"]["steps"] > 0 and health["batch"]["running"] == 0
    metrics = httpx.get(url + "/metrics", timeout=60).text
    assert 'asymmetry_generated_tokens_total{expert="commonsense"}' in metrics
    count = next(line for line in metrics.splitlines() if line.startswith("asymmetry_batch_rows_count"))
    assert float(count.split()[-1]) > 0  # the replicas' decode steps reach the ingress's histogram


def test_a_prompt_longer_than_the_context_is_a_400_from_the_replica(client):
    with pytest.raises(openai.BadRequestError) as exc:  # planned on the base replica (its warning stays there)
        ask(client, "word " * 3000)
    assert exc.value.body["code"] == "context_length_exceeded" and exc.value.body["param"] == "messages"


def test_replicas_that_cannot_fit_on_the_local_ray_fail_at_once(url):
    with pytest.raises(AsymmetryError, match=r"need 8 CPUs, but this Ray has 2: lower --ray-cpus"):
        build_app(Config.from_dict(SMALL), ServerSettings(), replicas=2, cpus=2.0)  # 2 bases x 2 replicas x 2 CPUs


def test_serve_help_names_ray_and_a_missing_ray_names_the_install(monkeypatch, capsys):
    sub = next(a for a in build_parser()._actions if a.dest == "command").choices["serve"]
    text = sub.format_help()
    for word in ("--ray", "--ray-replicas", "--ray-cpus", "serve.multiplexed"):
        assert word in text, word
    with pytest.raises(AsymmetryError, match="--ray-replicas"):
        build_app(Config.from_dict(SMALL), ServerSettings(), replicas=0)
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    assert main(["serve", "--ray", "--port", str(free_port())]) == 2
    assert "pip install -e '.[ray]'" in capsys.readouterr().err


@pytest.mark.slow
def test_asymmetry_serve_ray_keeps_an_experts_requests_on_its_replica_and_stops_at_ctrl_c(tmp_path):
    """``asymmetry serve --ray --ray-replicas 2`` in a subprocess (its own private local Ray): once a replica has
    loaded an expert, Ray Serve sends that expert's requests to it (multiplexed by model name; two replicas chosen at
    random would split them). SIGINT while a stream is decoded deletes the application, stops that Ray and exits;
    nothing listens on the port any more."""
    replicas: dict[str, list[str]] = {}

    def ask_three_times_each(url: str) -> None:
        # two replicas of the SmolLM2 deployment exist: /health asks a random one of them each time
        seen = {httpx.get(url + "/health", timeout=60).json()["bases"][SMOLLM]["replica"] for _ in range(12)}
        assert len(seen) == 2, seen
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=300)
        for model in ("science", "commonsense", "science", "commonsense", "science", "commonsense"):
            r = ask(client, "Name a planet.", model=model, max_tokens=2)
            replicas.setdefault(model, []).append(r.model_extra["asymmetry"]["stats"]["replica"])
            time.sleep(0.5)  # the replica reports what it loaded to Serve's routers every 0.1 s

    status, seconds, out, url = signal_during_a_stream(
        tmp_path, signal.SIGINT, "--ray", "--ray-replicas", "2", "--no-preload", "--ray-cpus", "0.5",
        "--shutdown-timeout", "2", start_s=300, before=ask_three_times_each)
    assert all(len(set(ids)) == 1 for ids in replicas.values()), replicas
    assert status == 0 and seconds < 60, out[-2000:]
    assert "shutting down Ray Serve" in out
    with pytest.raises(httpx.ConnectError):
        httpx.get(url + "/health", timeout=5)
