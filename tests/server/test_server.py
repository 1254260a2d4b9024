"""``asymmetry serve`` through the real ``openai`` client against a real uvicorn on loopback.

The server runs in a thread of the test process (a free port on 127.0.0.1, the session's model pool) and stops at the
end of the module, or by itself after ten minutes. For speed these tests use the ``small`` expert line-up
(``[experts] lineup = "small"``: LoRA experts on SmolLM2-135M) and short ``max_tokens``; the 1.5B default line-up is
too slow for the default suite on 2 CPU cores. Greedy decoding (temperature 0) makes answers comparable.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import openai
import pytest
import uvicorn

from asymmetry.config import Config
from asymmetry.engine import Engine
from asymmetry.errors import AsymmetryError
from asymmetry.experts import ModelPool
from asymmetry.server import ServerSettings, create_app

GREEDY = {"max_tokens": 10, "temperature": 0}
NO_RETRIEVAL = {"retrieval": False}
WATCHDOG_S = 600


@contextlib.contextmanager
def running_server(engine: Engine, **settings):
    """A uvicorn serving ``engine`` on a free loopback port; yields its base URL; stops on exit or by itself."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = create_app(engine, ServerSettings(port=port, preload=False, **settings))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           timeout_graceful_shutdown=5))
    thread = threading.Thread(target=server.run, daemon=True)
    watchdog = threading.Timer(WATCHDOG_S, lambda: setattr(server, "should_exit", True))
    watchdog.daemon = True
    thread.start()
    watchdog.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        watchdog.cancel()
        thread.join(30)
        assert not thread.is_alive(), "the server did not stop"


def small_engine(pool) -> Engine:
    return Engine(Config.from_dict({"experts": {"lineup": "small"}}), pool=pool)


@pytest.fixture(scope="module")
def pool():
    """A pool of this module's own: the server attaches the small line-up's adapters to its SmolLM2, and the session's
    shared SmolLM2 stays bare for the other tests."""
    return ModelPool()


@pytest.fixture(scope="module")
def url(pool):
    with running_server(small_engine(pool)) as base_url:
        yield base_url


@pytest.fixture(scope="module")
def client(url):
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=300)


def ask(client, content: str, model: str = "general", **kw):
    extra = {**NO_RETRIEVAL, **kw.pop("extra_body", {})}
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": content}],
                                          **{**GREEDY, **kw}, extra_body=extra)


def test_models_list_names_experts_auto_base_and_the_embedder(client):
    ids = [m.id for m in client.models.list().data]
    assert ids[:1] == ["auto"]
    assert {"science", "commonsense", "general", "scholar", "base", "all-MiniLM-L6-v2"} <= set(ids)


def test_chat_answers_with_usage_and_the_asymmetry_object(client):
    r = ask(client, "Name a planet of the solar system.")
    choice = r.choices[0]
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-") and r.model == "general"
    assert choice.message.role == "assistant" and choice.message.content.strip()
    assert choice.finish_reason in ("stop", "length")
    ext = r.model_extra["asymmetry"]
    assert ext["expert"] == "general" and ext["sources"] == [] and ext["confidence"] is None
    assert r.usage.prompt_tokens == ext["stats"]["prompt_tokens"] > 10
    assert r.usage.completion_tokens == ext["stats"]["completion_tokens"] <= 10
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_stream_gives_the_same_text_then_finish_extension_and_usage(client):
    whole = ask(client, "What is water made of?", model="science").choices[0].message.content
    chunks = list(ask(client, "What is water made of?", model="science", stream=True,
                      stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole
    finish = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finish) == 1 and finish[0].model_extra["asymmetry"]["expert"] == "science"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0


def test_auto_routes_retrieves_and_returns_sources(client):
    r = client.chat.completions.create(model="auto", max_tokens=8, temperature=0, messages=[
        {"role": "user", "content": "Who developed the theory of general relativity?"}])
    ext = r.model_extra["asymmetry"]
    assert ext["expert"] in ("science", "commonsense", "general", "scholar") and ext["confidence"] is not None
    assert ext["sources"] and all(s["title"] and "score" in s and "url" in s for s in ext["sources"])


def test_cfg_and_mirostat_extensions_reach_the_sampler(client):
    r = ask(client, "Describe the sea.", temperature=0.8, seed=3, extra_body={
        "cfg_scale": 1.5, "negative_prompt": "Answer rudely.", "mirostat": 2, "mirostat_tau": 4.0})
    stats = r.model_extra["asymmetry"]["stats"]
    assert "cfg" in stats["stages"] and "mirostat" in stats["stages"]
    assert stats["rows"] == 2 and stats["seed"] == 3  # the CFG negative rides in the same batch


def test_json_schema_response_format_parses(client):
    schema = {"type": "object", "properties": {"planet": {"type": "string", "maxLength": 12}},
              "required": ["planet"], "additionalProperties": False}
    r = ask(client, "Name a planet as JSON.", max_tokens=40, response_format={
        "type": "json_schema", "json_schema": {"name": "planet", "schema": schema}})
    assert isinstance(json.loads(r.choices[0].message.content)["planet"], str)


def test_completions_continue_a_raw_prompt_and_embeddings_embed(client):
    r = client.completions.create(model="general", prompt="The capital of France is", max_tokens=4, temperature=0)
    assert r.object == "text_completion" and r.choices[0].text and r.usage.prompt_tokens == 5
    e = client.embeddings.create(model="all-MiniLM-L6-v2", input=["a cat", "a dog"])
    assert len(e.data) == 2 and len(e.data[0].embedding) == 384 and e.usage.prompt_tokens > 0


def test_langchain_chat_openai_talks_to_the_server(url):
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(base_url=url + "/v1", api_key="unused", model="general", max_tokens=8, temperature=0,
                     max_retries=0, extra_body=NO_RETRIEVAL)
    message = llm.invoke([("system", "Answer briefly."), ("human", "Name a planet.")])
    assert message.content.strip() and message.usage_metadata["output_tokens"] > 0
    streamed = "".join(chunk.content for chunk in llm.stream("Name a planet."))
    assert streamed == llm.invoke("Name a planet.").content


def test_errors_are_openai_error_objects(client, url):
    r = httpx.post(url + "/v1/chat/completions", content=b'{"model": "general", "messages": [', timeout=30)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    with pytest.raises(openai.NotFoundError) as exc:
        ask(client, "hi", model="gpt-5")
    assert exc.value.body["param"] == "model" and exc.value.body["code"] == "model_not_found"
    for bad, param in (({"temperature": 5}, "temperature"), ({"max_tokens": 10**6}, "max_tokens"),
                       ({"n": 2}, "n"), ({"extra_body": {"mirostat": 7}}, "mirostat"),
                       ({"extra_body": {"grammar": "root ::= ("}}, "grammar")):
        with pytest.raises(openai.BadRequestError) as exc:
            ask(client, "hi", **bad)
        assert exc.value.body["param"] == param, exc.value.body
        assert exc.value.body["type"] == "invalid_request_error" and exc.value.body["message"]
    r = httpx.post(url + "/v1/chat/completions", json={"model": "general", "messages": [{"role": "robot"}]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages.0.role"


def test_a_prompt_longer_than_the_context_is_a_400(client):
    with pytest.warns(UserWarning), pytest.raises(openai.BadRequestError) as exc:
        ask(client, "word " * 3000)
    assert exc.value.body["code"] == "context_length_exceeded" and exc.value.body["param"] == "messages"


def test_two_concurrent_requests_share_decode_steps_and_keep_their_answers(client):
    # the bare science expert beside commonsense's adapter row; a question the commonsense expert answers in a
    # sentence (a one-word cloze reply would end at the prefill, before any shared step)
    jobs = [("What gas do plants absorb for photosynthesis?", "science"),
            ("Why do people wear warm coats in winter? Explain in a sentence.", "commonsense")]
    sequential = [ask(client, q, model=m, max_tokens=16).choices[0].message.content for q, m in jobs]
    results: dict[int, object] = {}
    barrier = threading.Barrier(2)

    def run(i: int) -> None:
        barrier.wait()
        results[i] = ask(client, jobs[i][0], model=jobs[i][1], max_tokens=16)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert [results[i].choices[0].message.content for i in range(2)] == sequential
    stats = [results[i].model_extra["asymmetry"]["stats"] for i in range(2)]
    assert all(s["shared_steps"] > 0 and s["max_batch_rows"] == 2 for s in stats), stats


@pytest.mark.slow
def test_eight_streaming_clients_on_mixed_experts_and_two_bases_get_their_sequential_answers(client):
    """Rows of three experts of SmolLM2 share one batch while scholar (Qwen2.5-Coder-0.5B) runs in its own."""
    experts = ["science", "commonsense", "general", "scholar"] * 2
    questions = [f"Tell me one fact about the number {i}." for i in range(len(experts))]
    sequential = [ask(client, q, model=m, max_tokens=16).choices[0].message.content for q, m in zip(questions, experts)]
    results: dict[int, str] = {}
    barrier = threading.Barrier(len(experts))

    def run(i: int) -> None:
        barrier.wait()
        chunks = ask(client, questions[i], model=experts[i], max_tokens=16, stream=True)
        results[i] = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(experts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    assert [results[i] for i in range(len(experts))] == sequential


def test_a_client_that_disconnects_frees_its_rows(client, url):
    with client.completions.with_streaming_response.create(
            model="general", prompt="1, 2, 3, 4, 5, 6,", max_tokens=300, temperature=0, stream=True) as response:
        lines = (line for line in response.iter_lines() if line.startswith("data:"))
        assert json.loads(next(lines)[5:])["choices"][0]["text"]  # decoding has begun
        health = httpx.get(url + "/health").json()
        assert health["batch"]["running"] == 1 and health["in_flight"] == 1
    deadline = time.monotonic() + 30
    while (health := httpx.get(url + "/health").json())["batch"]["running"] or health["in_flight"]:
        assert time.monotonic() < deadline, f"the disconnected request still holds its rows: {health}"
        time.sleep(0.1)
    assert health["batch"]["rows"] == 0


def test_metrics_count_requests_tokens_batches_and_first_tokens(client, url):
    ask(client, "Name a colour.", max_tokens=3)
    metrics = httpx.get(url + "/metrics").text
    for name in ('asymmetry_requests_total{endpoint="/v1/chat/completions",status="200"}',
                 'asymmetry_generated_tokens_total{expert="general"}', "asymmetry_queue_depth",
                 "asymmetry_batch_rows_bucket", "asymmetry_time_to_first_token_seconds_bucket",
                 'asymmetry_expert_requests_total{expert="general"}'):
        assert name in metrics, name


def test_a_full_queue_answers_429_with_retry_after(pool):
    with running_server(small_engine(pool), max_batch=1, max_waiting=0) as base_url:
        counting = {"model": "general", "prompt": "1, 2, 3, 4, 5, 6,", "max_tokens": 300, "stream": True}
        with httpx.stream("POST", base_url + "/v1/completions", json=counting, timeout=60) as first:
            assert first.status_code == 200
            next(first.iter_lines())
            second = httpx.post(base_url + "/v1/completions", json={**counting, "stream": False}, timeout=60)
        assert second.status_code == 429 and second.headers["retry-after"].isdigit()
        assert second.json()["error"]["type"] == "rate_limit_error"


def test_api_key_is_required_beyond_loopback_and_checked(pool):
    with pytest.raises(AsymmetryError, match="--api-key"):
        ServerSettings(host="0.0.0.0")
    with running_server(small_engine(pool), api_key="sesame") as base_url:
        assert httpx.get(base_url + "/v1/models").status_code == 401
        assert httpx.get(base_url + "/health").status_code == 200
        ok = openai.OpenAI(base_url=base_url + "/v1", api_key="sesame", max_retries=0)
        assert "auto" in [m.id for m in ok.models.list().data]
        too_big = httpx.post(base_url + "/v1/embeddings", content=b"x" * 2_000_000,
                             headers={"Authorization": "Bearer sesame"})
        assert too_big.status_code == 413 and too_big.json()["error"]["code"] == "request_too_large"


def test_serve_help_lists_the_endpoints():
    from asymmetry.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command").choices["serve"]
    text = sub.format_help()
    for word in ("/v1/chat/completions", "--api-key", "--max-batch", "cfg_scale", "429"):
        assert word in text, word


def signal_during_a_stream(tmp_path, sig: int, *serve_args: str, start_s: float = 120,
                           before=None) -> tuple[int, float, str, str]:
    """``asymmetry serve SERVE_ARGS`` (the small line-up, a free loopback port; never $RAY_ADDRESS) in a subprocess:
    ``before(url)`` once it answers, then once a stream is being decoded, send ``sig``. Returns the exit status, the
    seconds from the signal to the exit, the output and the server's URL."""
    config = tmp_path / "small.toml"
    config.write_text('[experts]\nlineup = "small"\n', encoding="utf-8")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.Popen([sys.executable, "-m", "asymmetry", "--config", str(config), "serve", "--port", str(port),
                             *serve_args], env={**env, "OMP_NUM_THREADS": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + start_s
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, "the server did not start"
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/health", timeout=5).status_code == 200:
                    break
            time.sleep(0.2)
        if before is not None:
            before(url)
        counting = {"model": "general", "prompt": "1, 2, 3, 4, 5, 6,", "max_tokens": 400, "stream": True}
        with httpx.stream("POST", url + "/v1/completions", json=counting, timeout=120) as response:
            lines = response.iter_lines()
            assert next(line for line in lines if line.startswith("data:"))  # decoding has begun
            proc.send_signal(sig)
            t0 = time.monotonic()
            with contextlib.suppress(httpx.HTTPError):
                for _ in lines:
                    pass
        status = proc.wait(timeout=90)
        return status, time.monotonic() - t0, proc.stdout.read(), url
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.slow
def test_sigterm_stops_the_server_cleanly(tmp_path):
    """``asymmetry serve`` in a subprocess: SIGTERM while a stream is being decoded shuts the app down (lifespan
    shutdown: the batches stop) within its shutdown timeout, and the stream ends rather than hanging."""
    status, seconds, out, _ = signal_during_a_stream(tmp_path, signal.SIGTERM, "--no-preload", "--shutdown-timeout", "2")
    # uvicorn re-raises the signal once it has shut down, so the exit status is "terminated by SIGTERM"
    assert status in (0, -signal.SIGTERM)
    assert seconds < 30
    assert "Application shutdown complete" in out
