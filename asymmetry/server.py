"""An OpenAI-compatible HTTP server over the engine: ``asymmetry serve``.

The server only translates. Each HTTP request becomes one :class:`~asymmetry.engine.Request`, the engine plans it
(embed once, route, retrieve, prompt) and decodes it; with batching on (:meth:`Engine.start_batching`) every decode
joins the running batch of its pooled base between steps, so concurrent clients share each forward (continuous
batching, ``sampling/batch.py``). The answer's :class:`~asymmetry.engine.Answer` becomes the OpenAI response plus an
``asymmetry`` object (expert, confidence, sources, sampler stats).

Endpoints: ``GET /v1/models``, ``POST /v1/chat/completions``, ``POST /v1/completions``, ``POST /v1/embeddings``,
``GET /health``, ``GET /metrics`` (Prometheus). Errors are OpenAI error objects
(``{"error": {"message", "type", "param", "code"}}``) with the status OpenAI uses.

    engine = Engine(Config.load("my.toml"))
    app = create_app(engine, ServerSettings(api_key="..."))   # an ASGI app (FastAPI)
    serve(engine, ServerSettings(host="127.0.0.1", port=8000))  # runs uvicorn until Ctrl-C / SIGTERM
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import ipaddress
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import anyio
import anyio.to_thread
import uvicorn
from fastapi import FastAPI
from fastapi import Request as HTTPRequest
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from asymmetry import defaults
from asymmetry.engine import AUTO, BARE, Answer, AnswerStream, Engine, Plan, Request
from asymmetry.errors import AsymmetryError, ConfigError
from asymmetry.sampling.batch import QueueFull
from asymmetry.sampling.logprobs import MAX_TOP_LOGPROBS, TokenLogprob
from asymmetry.sampling.logprobs import legacy as legacy_logprobs

log = logging.getLogger(__name__)

OWNER = "asymmetry"
FINISH_REASONS = {"eos": "stop", "stop": "stop", "grammar": "stop", "length": "length"}
# sampler fields whose request name differs (the error names the field the client sent)
PARAM_OF_FIELD = {"tau": "mirostat_tau", "eta": "mirostat_eta", "json_schema": "response_format"}
# stats that are per token (long) stay out of the response
DROPPED_STATS = ("surprise_bits",)


@dataclass
class ServerSettings:
    """``asymmetry serve`` options. A host other than loopback needs ``api_key``."""

    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    max_batch: int = 16  # rows decoded together per base (a CFG request takes 2)
    max_waiting: int = 64  # requests waiting for the batch; beyond that 429
    max_tokens_cap: int = 1024  # the largest max_tokens a request may ask for
    max_body_bytes: int = 1_000_000
    retry_after_s: int = 2
    preload: bool = True  # load the router, retriever and the default base before accepting requests
    shutdown_timeout_s: float = 10.0  # in-flight requests get this long to finish at Ctrl-C/SIGTERM

    def __post_init__(self) -> None:
        for name in ("port", "max_batch", "max_tokens_cap", "max_body_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < (0 if name == "port" else 1):
                raise ConfigError(f"serve.{name}", value, "use a positive integer")
        if not isinstance(self.max_waiting, int) or self.max_waiting < 0:
            raise ConfigError("serve.max_waiting", self.max_waiting, "use 0 or a positive integer")
        if not is_loopback(self.host) and not self.api_key:
            raise AsymmetryError(f"binding {self.host} exposes the server beyond this machine: pass --api-key KEY "
                                 "(clients send it as 'Authorization: Bearer KEY'), or bind 127.0.0.1")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# -- errors ----------------------------------------------------------------------------------------------------------


class APIError(Exception):
    """An OpenAI error object with its HTTP status."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code
        self.headers = headers

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)

    def fields(self) -> dict[str, Any]:
        """Plain fields (to cross a process boundary): ``APIError(**error.fields())`` rebuilds it."""
        return {"status": self.status, "message": self.message, "type_": self.type, "param": self.param,
                "code": self.code, "headers": self.headers}


TYPE_TAGS = {"str", "int", "float", "bool", "list", "dict", "function-after", "json-or-python"}


def _from_validation(exc: ValidationError) -> APIError:
    """The first problem pydantic found, naming the field as the client sent it (``messages.0.role``)."""
    err = exc.errors()[0]
    parts = [str(p) for p in err.get("loc", ()) if isinstance(p, int) or (str(p).isidentifier() and p not in TYPE_TAGS)]
    param = ".".join(parts) or None
    return APIError(400, f"invalid {param}: {err.get('msg')}", param=param, code="invalid_value")


def from_engine_error(exc: AsymmetryError, request: Request | None = None) -> APIError:
    if isinstance(exc, QueueFull):
        return APIError(429, str(exc), "rate_limit_error", code="queue_full")
    if isinstance(exc, ConfigError):
        name = exc.field.split(".")[-1]
        return APIError(400, str(exc), param=PARAM_OF_FIELD.get(name, name), code="invalid_value")
    text = str(exc)
    param = None
    if "grammar" in text.lower() or "schema" in text.lower():
        sampler = request.sampler if request is not None and isinstance(request.sampler, dict) else {}
        param = "response_format" if "json_schema" in sampler else "grammar"
    elif "max_tokens" in text:
        param = "max_tokens"
    return APIError(400, text, param=param)


# -- request bodies --------------------------------------------------------------------------------------------------


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class ContentPart(_Body):
    type: str
    text: str | None = None


class Message(_Body):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart] | None = None


class StreamOptions(_Body):
    include_usage: bool = False


class JSONSchemaFormat(_Body):
    name: str | None = None
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Body):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None


class SamplingBody(_Body):
    """The sampling fields of both completion endpoints, OpenAI's and ours (llama.cpp/vLLM-style extras)."""

    model: str
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    seed: int | None = Field(None, ge=0)
    stop: str | list[str] | None = None
    n: int = 1
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    logprobs: Any = None
    # extensions
    mirostat: int | None = Field(None, ge=0, le=2)
    mirostat_tau: float | None = Field(None, gt=0)
    mirostat_eta: float | None = Field(None, gt=0)
    cfg_scale: float | None = None
    negative_prompt: str | None = None
    grammar: str | None = None
    min_p: float | None = Field(None, ge=0, lt=1)
    top_k: int | None = Field(None, ge=0)
    repeat_penalty: float | None = Field(None, gt=0)
    retrieval: bool | None = None
    k: int | None = Field(None, ge=1, le=50)
    mixture: bool | None = None


class ChatBody(SamplingBody):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    top_logprobs: Any = None  # checked by _logprobs_asked (a bool is not a count)
    response_format: ResponseFormat | None = None


class CompletionBody(SamplingBody):
    prompt: str | list[str]
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None


class EmbeddingBody(_Body):
    model: str
    input: str | list[str]
    encoding_format: Literal["float", "base64"] = "float"  # base64: little-endian float32 bytes (the openai client)


# -- translation -----------------------------------------------------------------------------------------------------


def _sampler_overrides(body: SamplingBody, cap: int) -> dict[str, Any]:
    """Sampler fields the request sets (the expert's defaults apply to the rest)."""
    if body.n != 1:
        raise APIError(400, f"n={body.n}: this server returns one choice per request; send n=1 (or omit it)",
                       param="n", code="unsupported_value")
    logprobs = _logprobs_asked(body)
    max_tokens = getattr(body, "max_completion_tokens", None) or body.max_tokens
    if max_tokens is not None and max_tokens > cap:
        param = "max_completion_tokens" if getattr(body, "max_completion_tokens", None) else "max_tokens"
        raise APIError(400, f"{param}={max_tokens} is above this server's cap of {cap}: ask for at most {cap}",
                       param=param, code="invalid_value")
    stop = [body.stop] if isinstance(body.stop, str) else body.stop
    if stop is not None and (len(stop) > 4 or not all(stop)):
        raise APIError(400, "stop: use at most 4 non-empty strings", param="stop", code="invalid_value")
    fields = {
        "max_tokens": max_tokens, "temperature": body.temperature, "top_p": body.top_p, "seed": body.seed,
        "stop": stop, "presence_penalty": body.presence_penalty, "frequency_penalty": body.frequency_penalty,
        "mirostat": body.mirostat, "tau": body.mirostat_tau, "eta": body.mirostat_eta, "cfg_scale": body.cfg_scale,
        "negative_prompt": body.negative_prompt, "grammar": body.grammar, "min_p": body.min_p, "top_k": body.top_k,
        "repeat_penalty": body.repeat_penalty,
    }
    out = {k: v for k, v in fields.items() if v is not None}
    if logprobs is not None:
        out["logprobs"] = logprobs  # alternatives per token (sampling/logprobs.py)
    if body.temperature is not None and body.temperature > 0:
        out["greedy"] = False  # an expert that decodes greedily by default samples when asked for a temperature
    return out


def _logprobs_asked(body: SamplingBody) -> int | None:
    """Alternatives per token the request asks for, None for no log-probabilities. Chat: ``logprobs: true`` and
    ``top_logprobs`` 0-20; completions: ``logprobs`` 0-5 (the legacy field is the count)."""
    def count(name: str, value: Any, most: int, fix: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= most:
            raise APIError(400, f"{name}={json.dumps(value)} is out of range: use an integer from 0 to {most}{fix}",
                           param=name, code="invalid_value")
        return value

    if not isinstance(body, ChatBody):
        return None if body.logprobs in (None, False) else count("logprobs", body.logprobs, 5, ", or omit it")
    if body.logprobs not in (None, True, False):
        raise APIError(400, f"logprobs={json.dumps(body.logprobs)}: use true or false (the number of alternatives "
                       "per token goes in top_logprobs, 0 to 20)", param="logprobs", code="invalid_value")
    if body.top_logprobs is None:
        return 0 if body.logprobs else None
    if body.logprobs is not True:
        raise APIError(400, "top_logprobs needs \"logprobs\": true: add it, or omit top_logprobs",
                       param="top_logprobs", code="invalid_value")
    return count("top_logprobs", body.top_logprobs, MAX_TOP_LOGPROBS, " alternatives per token")


def _logprobs_field(entries: list[TokenLogprob] | None, asked: bool, chat: bool) -> dict[str, Any] | None:
    """A choice's ``logprobs``: chat ``{content: [...]}``, completions the legacy shape; None when not asked."""
    if not asked:
        return None
    entries = entries or []
    return {"content": [e.to_openai() for e in entries]} if chat else legacy_logprobs(entries)


def _text_of(message: Message, where: str) -> str:
    if message.content is None:
        return ""
    if isinstance(message.content, str):
        return message.content
    parts = []
    for i, part in enumerate(message.content):
        if part.type != "text" or part.text is None:
            raise APIError(400, f"content part of type {part.type!r} is not supported: send text parts",
                           param=f"{where}.content.{i}.type", code="unsupported_value")
        parts.append(part.text)
    return "".join(parts)


def _chat_request(body: ChatBody, cap: int) -> Request:
    """messages -> question (the last user message) + history (the earlier turns; system messages kept)."""
    sampler = _sampler_overrides(body, cap)
    fmt = body.response_format
    if fmt is not None and fmt.type != "text":
        if body.grammar is not None:
            raise APIError(400, "set either grammar or response_format, not both", param="response_format")
        schema = fmt.json_schema.schema_ if fmt.type == "json_schema" and fmt.json_schema else {"type": "object"}
        sampler["json_schema"] = json.dumps(schema or {"type": "object"})
    *earlier, last = body.messages
    if last.role != "user":
        raise APIError(400, f"the last message must come from the user, not {last.role!r}",
                       param=f"messages.{len(body.messages) - 1}.role")
    question = _text_of(last, f"messages.{len(body.messages) - 1}")
    if not question.strip():
        raise APIError(400, "the last user message is empty", param=f"messages.{len(body.messages) - 1}.content")
    history = []
    for i, m in enumerate(earlier):
        role = "system" if m.role == "developer" else m.role
        history.append({"role": role, "content": _text_of(m, f"messages.{i}")})
    return Request(question=question, expert=body.model, retrieval=body.retrieval, sampler=sampler,
                   history=tuple(history), mixture=body.mixture, k=body.k)


def _completion_request(body: CompletionBody, cap: int) -> Request:
    sampler = _sampler_overrides(body, cap)
    for name, default in (("echo", False), ("suffix", None), ("best_of", None)):
        if getattr(body, name) not in (default, 1 if name == "best_of" else default):
            raise APIError(400, f"{name} is not supported by this server: omit it", param=name,
                           code="unsupported_value")
    prompt = body.prompt
    if isinstance(prompt, list):
        if len(prompt) != 1:
            raise APIError(400, "send one prompt per request", param="prompt", code="unsupported_value")
        prompt = prompt[0]
    if not prompt:
        raise APIError(400, "the prompt is empty", param="prompt")
    return Request(question=prompt, expert=body.model, retrieval=False, sampler=sampler, raw=True)


def _usage(answer: Answer) -> dict[str, int]:
    prompt = int(answer.stats.get("prompt_tokens") or 0)
    completion = int(answer.stats.get("completion_tokens") or 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def asymmetry_object(answer: Answer) -> dict[str, Any]:
    """Our extension of a response: who answered, with what confidence, from which sources, how it decoded."""
    return {
        "expert": answer.expert,
        "confidence": answer.confidence,
        "sources": [{"title": s.title, "url": s.url, "score": s.score} for s in answer.sources],
        "stats": {k: v for k, v in answer.stats.items() if k not in DROPPED_STATS},
        "timings": answer.timings,
    }


def _finish_reason(answer: Answer) -> str:
    return FINISH_REASONS.get(answer.stats.get("finish_reason"), "stop")


# -- metrics ---------------------------------------------------------------------------------------------------------


class Metrics:
    """The server's Prometheus metrics, in a registry of its own (several apps may live in one process)."""

    def __init__(self):
        self.registry = r = CollectorRegistry()
        self.requests = Counter("asymmetry_requests", "HTTP requests by endpoint and status",
                                ["endpoint", "status"], registry=r)
        self.expert_requests = Counter("asymmetry_expert_requests", "decoded requests by expert", ["expert"],
                                       registry=r)
        self.prompt_tokens = Counter("asymmetry_prompt_tokens", "prompt tokens of decoded requests", registry=r)
        self.generated_tokens = Counter("asymmetry_generated_tokens", "generated tokens", ["expert"], registry=r)
        self.ttft = Histogram("asymmetry_time_to_first_token_seconds", "request arrival to first text",
                              buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32), registry=r)
        self.batch_rows = Histogram("asymmetry_batch_rows", "rows per decode step of a running batch",
                                    buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32), registry=r)
        self.queue_depth = Gauge("asymmetry_queue_depth", "requests waiting to join a batch", registry=r)
        self.running = Gauge("asymmetry_running_requests", "requests in a running batch", registry=r)
        self.in_flight = Gauge("asymmetry_in_flight_requests", "requests being planned, waiting or decoded",
                               registry=r)

    def batch(self, stats: dict[str, int]) -> None:
        """The batch gauges from the backend's batch state (read when /metrics is scraped)."""
        self.queue_depth.set(stats.get("waiting", 0))
        self.running.set(stats.get("running", 0))

    def on_step(self, rows: int, requests: int) -> None:
        self.batch_rows.observe(rows)

    def answered(self, answer: Answer) -> None:
        self.expert_requests.labels(answer.expert).inc()
        self.prompt_tokens.inc(int(answer.stats.get("prompt_tokens") or 0))
        self.generated_tokens.labels(answer.expert).inc(int(answer.stats.get("completion_tokens") or 0))


# -- backends: where planned requests are decoded --------------------------------------------------------------------


class Reply(Protocol):
    """One request being decoded: iterate for its text deltas (errors arrive as :class:`APIError`), then read
    ``answer`` (``None`` or ``interrupted`` when it was cancelled); ``cancel()`` stops it from any task."""

    request: Request
    answer: Answer | None

    def __aiter__(self) -> AsyncIterator[str]: ...

    def cancel(self) -> None: ...


class Backend(Protocol):
    """What the HTTP layer decodes with. ``engine`` answers what needs no base model (the config, the expert names,
    the embedder); :meth:`open` plans a request and starts decoding it, raising :class:`APIError`."""

    engine: Engine

    async def startup(self, settings: ServerSettings, on_step: Callable[[int, int], None]) -> None: ...

    async def shutdown(self) -> None: ...

    async def open(self, request: Request) -> Reply: ...

    async def health(self) -> dict[str, Any]:
        """``{"batch": {"waiting", "running", "rows", ...}}`` and anything else worth showing on /health."""
        ...


def open_stream(engine: Engine, request: Request, retry_after_s: int) -> AnswerStream:
    """Plan ``request`` (embedding, routing, retrieval, prompt) and start decoding it; errors become APIErrors.
    Blocking: call it from a worker thread."""
    try:
        plan: Plan = engine.plan(request)
        if plan.notice and "longer than the context" in plan.notice:
            raise APIError(400, f"{plan.notice}: shorten the prompt or lower max_tokens",
                           param="prompt" if request.raw else "messages", code="context_length_exceeded")
        return engine.stream(plan)
    except QueueFull as exc:
        raise APIError(429, str(exc), "rate_limit_error", code="queue_full",
                       headers={"Retry-After": str(retry_after_s)}) from exc
    except AsymmetryError as exc:
        raise from_engine_error(exc, request) from exc


class LocalReply:
    """An :class:`AnswerStream` of this process, its deltas read in worker threads."""

    def __init__(self, stream: AnswerStream):
        self.stream, self.request = stream, stream.plan.request

    @property
    def answer(self) -> Answer | None:
        return self.stream.answer

    def cancel(self) -> None:
        self.stream.cancel()

    async def __aiter__(self) -> AsyncIterator[str]:
        it = iter(self.stream)
        try:
            while True:
                try:
                    delta = await anyio.to_thread.run_sync(next, it, None, abandon_on_cancel=True)
                except AsymmetryError as exc:  # decoding failed (e.g. the stages filtered out every token)
                    raise from_engine_error(exc, self.request) from exc
                if delta is None:
                    return
                yield delta
        finally:
            if self.stream.answer is None:  # left early (a client that disconnected): free its rows
                self.stream.cancel()


class LocalBackend:
    """Decode in this process: the engine's continuous batching, one running batch per pooled base."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.retry_after_s = 2

    async def startup(self, settings: ServerSettings, on_step: Callable[[int, int], None]) -> None:
        self.retry_after_s = settings.retry_after_s
        self.engine.start_batching(max_rows=settings.max_batch, max_waiting=settings.max_waiting, on_step=on_step)
        if settings.preload:
            await anyio.to_thread.run_sync(preload, self.engine)

    async def shutdown(self) -> None:
        self.engine.stop_batching()

    async def open(self, request: Request) -> Reply:
        opened: list[AnswerStream] = []
        try:
            await anyio.to_thread.run_sync(lambda: opened.append(open_stream(self.engine, request, self.retry_after_s)))
        except BaseException:  # cancelled while the thread planned: the stream it opened must not keep its rows
            if opened:
                opened[0].cancel()
            raise
        return LocalReply(opened[0])

    async def health(self) -> dict[str, Any]:
        return {"batch": self.engine.batch_stats()}


# -- the app ---------------------------------------------------------------------------------------------------------


def _sse(data: Any) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


class _Server:
    """The handlers' shared state: the backend (and its engine), the settings, the metrics, the admission count."""

    def __init__(self, backend: Backend, settings: ServerSettings):
        self.backend, self.engine, self.settings = backend, backend.engine, settings
        self.metrics = Metrics()
        self.in_flight = 0
        self.created = int(time.time())

    # -- models ------------------------------------------------------------------------------------------------------
    def model_ids(self) -> list[str]:
        return [AUTO, *self.engine.experts.names(), BARE]

    def embedding_id(self) -> str:
        name = self.engine.config.index.embedding_model
        return defaults.DEFAULT_EMBEDDING_NAME if name in (None, "default") else str(name)

    def check_model(self, model: str, embedding: bool = False) -> None:
        known = [self.embedding_id()] if embedding else self.model_ids()
        if model not in known:
            raise APIError(404, f"The model {model!r} does not exist: use one of {', '.join(known)} "
                           "(GET /v1/models)", param="model", code="model_not_found")

    # -- admission ---------------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def admitted(self):
        limit = self.settings.max_batch + self.settings.max_waiting
        if self.in_flight >= limit:
            raise APIError(429, f"{self.in_flight} requests are in flight (limit {limit}): retry shortly",
                           "rate_limit_error", code="queue_full", headers=self._retry())
        self.in_flight += 1
        self.metrics.in_flight.set(self.in_flight)
        try:
            yield
        finally:
            self.in_flight -= 1
            self.metrics.in_flight.set(self.in_flight)

    def _retry(self) -> dict[str, str]:
        return {"Retry-After": str(self.settings.retry_after_s)}

    # -- one decoded request -----------------------------------------------------------------------------------------
    async def start(self, request: Request) -> Reply:
        """Plan and join the batch (the backend's); errors are APIErrors."""
        if isinstance(request.sampler, dict) and "max_tokens" not in request.sampler:  # the config's, within the cap
            cap = min(self.settings.max_tokens_cap, self.engine.config.sampler.max_tokens)
            request = dataclasses.replace(request, sampler={**request.sampler, "max_tokens": cap})
        return await self.backend.open(request)

    async def run_to_end(self, reply: Reply, http: HTTPRequest) -> Answer:
        """Decode to the end; a client that disconnects meanwhile (or a cancelled handler) cancels its rows."""
        try:
            async with anyio.create_task_group() as tg:
                async def watch() -> None:
                    while True:
                        await anyio.sleep(0.25)
                        if await http.is_disconnected():
                            reply.cancel()
                            return

                tg.start_soon(watch)
                error = None
                try:
                    async for _ in reply:
                        pass
                except APIError as exc:  # decoding failed (e.g. the stages filtered out every token)
                    error = exc
                finally:
                    tg.cancel_scope.cancel()
        finally:
            if reply.answer is None:
                reply.cancel()
        if error is not None:
            raise error
        if reply.answer is None or reply.answer.interrupted:
            raise APIError(499, "the client closed the request", code="client_closed_request")
        return reply.answer

    async def deltas(self, reply: Reply, t0: float) -> AsyncIterator[str]:
        """The reply's text deltas; leaving early (a client that disconnects) cancels its rows."""
        first = True
        try:
            async for delta in reply:
                if first:
                    self.metrics.ttft.observe(time.perf_counter() - t0)
                    first = False
                yield delta
        finally:
            if reply.answer is None:
                reply.cancel()


class Guard:
    """ASGI middleware: the API key (Bearer), the body-size cap (by Content-Length; the handlers check the body
    they read), and the per-endpoint request counter."""

    def __init__(self, app, srv: _Server):
        self.app, self.srv = app, srv

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        settings, path = self.srv.settings, scope["path"]
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        error = None
        if settings.api_key and path != "/health" and headers.get("authorization") != f"Bearer {settings.api_key}":
            error = APIError(401, "missing or wrong API key: send 'Authorization: Bearer KEY'", code="invalid_api_key")
        length = headers.get("content-length", "")
        if error is None and length.isdigit() and int(length) > settings.max_body_bytes:
            error = APIError(413, f"the request body is {length} bytes, above this server's limit of "
                             f"{settings.max_body_bytes}", code="request_too_large")
        status = [500]

        async def send_status(message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            if error is not None:
                await error.response()(scope, receive, send_status)
            else:
                await self.app(scope, receive, send_status)
        finally:
            self.srv.metrics.requests.labels(path if path in ENDPOINTS else "other", str(status[0])).inc()


ENDPOINTS = ("/health", "/metrics", "/v1/models", "/v1/chat/completions", "/v1/completions", "/v1/embeddings")


def create_app(engine: Engine, settings: ServerSettings | None = None, *, backend: Backend | None = None) -> FastAPI:
    """The ASGI app over ``engine``. Its lifespan starts the backend (by default :class:`LocalBackend`: continuous
    batching in this process) and preloads, and stops it. Another backend (``asymmetry/serve_ray.py``) decodes
    elsewhere behind the same routes, validation and error objects."""
    settings = settings or ServerSettings()
    backend = backend if backend is not None else LocalBackend(engine)
    srv = _Server(backend, settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        widen_thread_limit(settings)
        await backend.startup(settings, srv.metrics.on_step)
        try:
            yield
        finally:
            await backend.shutdown()

    app = FastAPI(title="asymmetry", version="0.1.0", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.server = srv

    app.add_middleware(Guard, srv=srv)

    @app.exception_handler(APIError)
    async def api_error(_: HTTPRequest, exc: APIError):
        return exc.response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: HTTPRequest, exc: StarletteHTTPException):
        type_ = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return APIError(exc.status_code, str(exc.detail), type_, headers=exc.headers).response()

    @app.exception_handler(Exception)
    async def server_error(_: HTTPRequest, exc: Exception):
        log.exception("request failed")
        return APIError(500, f"internal error: {type(exc).__name__}: {exc}", "server_error").response()

    async def parse(http: HTTPRequest, model: type[BaseModel]) -> Any:
        raw = await http.body()
        if len(raw) > settings.max_body_bytes:
            raise APIError(413, f"the request body is above this server's limit of {settings.max_body_bytes} "
                           "bytes", code="request_too_large")
        try:
            data = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise APIError(400, f"the request body is not valid JSON ({exc})", code="invalid_json") from None
        if not isinstance(data, dict):
            raise APIError(400, "the request body must be a JSON object", code="invalid_json")
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            raise _from_validation(exc) from None

    @app.get("/health")
    async def health():
        state = await backend.health()
        return {"status": "ok", **state, "in_flight": srv.in_flight}

    @app.get("/metrics")
    async def metrics():
        srv.metrics.batch((await backend.health())["batch"])
        return PlainTextResponse(generate_latest(srv.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models():
        data = [{"id": m, "object": "model", "created": srv.created, "owned_by": OWNER} for m in srv.model_ids()]
        data.append({"id": srv.embedding_id(), "object": "model", "created": srv.created, "owned_by": OWNER})
        return {"object": "list", "data": data}

    @app.post("/v1/chat/completions")
    async def chat(http: HTTPRequest):
        body: ChatBody = await parse(http, ChatBody)
        srv.check_model(body.model)
        request = _chat_request(body, settings.max_tokens_cap)
        return await _complete(http, body, request, chat=True)

    @app.post("/v1/completions")
    async def completions(http: HTTPRequest):
        body: CompletionBody = await parse(http, CompletionBody)
        srv.check_model(body.model)
        request = _completion_request(body, settings.max_tokens_cap)
        return await _complete(http, body, request, chat=False)

    async def _complete(http: HTTPRequest, body: SamplingBody, request: Request, chat: bool):
        t0 = time.perf_counter()
        kind = "chat.completion" if chat else "text_completion"
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        created = int(time.time())
        head = {"id": rid, "created": created, "model": body.model}
        if not body.stream:
            with srv.admitted():
                reply = await srv.start(request)
                answer = await srv.run_to_end(reply, http)
                srv.metrics.answered(answer)
                srv.metrics.ttft.observe(time.perf_counter() - t0)  # the whole answer is its first text
            logprobs = _logprobs_field(answer.logprobs, "logprobs" in request.sampler, chat)
            choice = ({"index": 0, "message": {"role": "assistant", "content": answer.text}, "logprobs": logprobs}
                      if chat else {"index": 0, "text": answer.text, "logprobs": logprobs})
            choice["finish_reason"] = _finish_reason(answer)
            return {**head, "object": kind, "choices": [choice], "usage": _usage(answer),
                    "asymmetry": asymmetry_object(answer)}

        admission = srv.admitted()
        admission.__enter__()
        try:
            reply = await srv.start(request)
        except BaseException:
            admission.__exit__(None, None, None)
            raise
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        asked = "logprobs" in request.sampler
        chunk_kind = kind + ".chunk" if chat else kind

        def chunk(delta: str | None, finish: str | None = None, **extra) -> str:
            # the entries of this delta's tokens (a TextDelta's, sampling/logprobs.py)
            logprobs = _logprobs_field(getattr(delta, "logprobs", None), asked and delta is not None, chat)
            if chat:
                choice = {"index": 0, "delta": {} if delta is None else {"content": delta}, "logprobs": logprobs,
                          "finish_reason": finish}
            else:
                choice = {"index": 0, "text": delta or "", "logprobs": logprobs, "finish_reason": finish}
            return _sse({**head, "object": chunk_kind, "choices": [choice], **extra})

        async def events() -> AsyncIterator[str]:
            try:
                if chat:
                    yield _sse({**head, "object": chunk_kind, "choices": [
                        {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                         "finish_reason": None}]})
                try:
                    async for delta in srv.deltas(reply, t0):
                        yield chunk(delta)
                except APIError as err:  # decoding failed after the stream began: an error event ends it
                    yield _sse(err.body())
                    return
                answer = reply.answer
                if answer is None or answer.interrupted:
                    return
                srv.metrics.answered(answer)
                usage = {"usage": None} if include_usage else {}
                yield chunk(None, _finish_reason(answer), asymmetry=asymmetry_object(answer), **usage)
                if include_usage:
                    yield _sse({**head, "object": chunk_kind, "choices": [], "usage": _usage(answer)})
                yield "data: [DONE]\n\n"
            finally:
                admission.__exit__(None, None, None)

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.post("/v1/embeddings")
    async def embeddings(http: HTTPRequest):
        body: EmbeddingBody = await parse(http, EmbeddingBody)
        srv.check_model(body.model, embedding=True)
        texts = [body.input] if isinstance(body.input, str) else list(body.input)
        if not texts or not all(isinstance(t, str) and t for t in texts):
            raise APIError(400, "input: send a non-empty string or a list of non-empty strings", param="input")
        if len(texts) > 2048:
            raise APIError(400, f"input holds {len(texts)} texts: send at most 2048", param="input")

        def embed() -> tuple[list, int]:
            embedder = engine.embedder
            vectors = embedder.encode(texts)  # (N, D)
            tokens = sum(len(ids) for ids in embedder.model.tokenizer(texts)["input_ids"])
            if body.encoding_format == "base64":
                return [base64.b64encode(v.astype("<f4").tobytes()).decode("ascii") for v in vectors], tokens
            return vectors.tolist(), tokens

        vectors, tokens = await anyio.to_thread.run_sync(embed)
        return {"object": "list", "model": body.model,
                "data": [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)],
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}

    return app


def preload(engine: Engine, experts: list[str] | None = None) -> None:
    """Load what the first request would: the embedder, the router, the retriever (building the default index on
    first use), and ``experts`` (default: every expert on the default expert's base), their adapters attached."""
    _ = engine.embedder.model, engine.router, engine.retriever
    if experts is None:
        default = engine.experts.get(engine.experts.default) if engine.experts.default else None
        experts = [name for name in engine.experts.names()
                   if default is None or engine.experts.get(name).base == default.base]
    for name in experts:
        engine.expert(name)


def widen_thread_limit(settings: ServerSettings) -> None:
    """Room in anyio's worker threads for every request a batch may hold (each waits in a thread for its deltas)."""
    limiter = anyio.to_thread.current_default_thread_limiter()
    limiter.total_tokens = max(limiter.total_tokens, 2 * (settings.max_batch + settings.max_waiting) + 8)


def serve(engine: Engine, settings: ServerSettings, *, log_level: str = "info", access_log: bool = False) -> None:
    """Run the server until Ctrl-C or SIGTERM: it stops accepting, gives in-flight requests
    ``settings.shutdown_timeout_s`` to finish, cancels the rest and stops the batches."""
    app = create_app(engine, settings)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level=log_level,
                            timeout_graceful_shutdown=settings.shutdown_timeout_s, access_log=access_log)
    uvicorn.Server(config).run()
