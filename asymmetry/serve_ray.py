"""``asymmetry serve --ray``: the OpenAI-compatible server as a Ray Serve application.

The HTTP layer is ``asymmetry/server.py``'s own (:func:`~asymmetry.server.create_app`: the same routes, validation,
OpenAI error objects, API key, caps and metrics); only its backend differs. Two kinds of deployment:

* ``ingress`` (one replica, no CPU reserved): the FastAPI app behind Ray Serve's HTTP proxy. It checks and translates
  each request, routes ``auto`` (the shared embedder + the router: no base model here) and answers embeddings, then
  streams the request through a deployment handle to the deployment of the chosen expert's base.
* one ``base-*`` deployment per base model of the line-up: each replica holds that ONE pooled base (its own
  :class:`~asymmetry.engine.Engine`, continuous batching on) and attaches the experts' adapters on demand, multiplexed
  by expert name (``serve.multiplexed``; the request's ``model``, or the router's choice for ``auto``), so Ray Serve
  sends an expert's requests to replicas that already hold its adapter. A replica plans the request (retrieval,
  prompt) and streams its deltas back; the answer (with sources and stats) closes the stream.

    asymmetry serve --ray [--ray-replicas 1] [--ray-cpus 1]      # a private local Ray, or $RAY_ADDRESS
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
import signal
import socket
import threading
from collections.abc import AsyncIterator
from typing import Any

import anyio
import anyio.to_thread

from asymmetry import cluster
from asymmetry.config import Config
from asymmetry.engine import AUTO, BARE, Answer, Engine, Request
from asymmetry.errors import AsymmetryError
from asymmetry.server import (
    APIError,
    LocalBackend,
    Reply,
    ServerSettings,
    create_app,
    from_engine_error,
    preload,
    widen_thread_limit,
)

log = logging.getLogger(__name__)

APP_NAME = "asymmetry"
INGRESS = "ingress"
ENV_PREFIXES = ("ASYMMETRY_", "HF_", "TRANSFORMERS_")  # what replicas must see as this process does (home, offline)


def base_groups(engine: Engine) -> dict[str, list[str]]:
    """Each base model of the line-up with the experts on it; ``base`` (bare) rides with the default expert's."""
    groups: dict[str, list[str]] = {}
    for name in engine.experts.names():
        groups.setdefault(engine.experts.get(name).base, []).append(name)
    default = engine.experts.default
    if default is not None:
        groups[engine.experts.get(default).base].append(BARE)
    return groups


def deployment_name(index: int, base: str) -> str:
    """``base-0-smollm2``: a Serve deployment name for the ``index``-th base (a path keeps its last part)."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", str(base).rstrip("/").split("/")[-1]).strip("-.")[:48]
    return f"base-{index}-{slug or 'model'}"


# -- the base deployment: one pooled base per replica ----------------------------------------------------------------


class BaseReplica:
    """A replica holding one pooled base and the adapters of its experts, attached on first use (multiplexed by
    expert name). Its methods are called through deployment handles by the ingress."""

    async def __init__(self, config: Config, base: str, experts: list[str], settings: ServerSettings):
        from ray import serve

        self.base, self.experts, self.settings = base, list(experts), settings
        self.engine = Engine(config)
        self.backend = LocalBackend(self.engine)
        self.steps: dict[int, int] = {}  # rows of a decode step -> steps so far (the ingress's batch_rows histogram)
        self.loaded: list[str] = []
        self.replica = serve.get_replica_context().replica_id.unique_id
        widen_thread_limit(settings)
        await self.backend.startup(dataclasses.replace(settings, preload=False), self._on_step)

        async def load_expert(name: str) -> str:
            if name not in self.experts:
                raise AsymmetryError(f"expert {name!r} is not on base {self.base} (this deployment holds "
                                     f"{', '.join(self.experts)})")
            await anyio.to_thread.run_sync(self.engine.expert, name)  # the base once, then the adapter attached
            if name not in self.loaded:
                self.loaded.append(name)
            return name

        # every expert of the base fits: an adapter is small, and one still used by a running row must stay attached
        self.load_expert = serve.multiplexed(max_num_models_per_replica=len(self.experts))(load_expert)
        if settings.preload:  # what planning needs (embedder, router, index), then the base and every adapter on it
            await anyio.to_thread.run_sync(preload, self.engine, [])
            for name in self.experts:
                await self.load_expert(name)  # through the multiplexer: Serve's routers learn what this replica holds

    def _on_step(self, rows: int, requests: int) -> None:
        self.steps[rows] = self.steps.get(rows, 0) + 1

    async def generate(self, request: Request) -> AsyncIterator[tuple[str, Any]]:
        """``("started", expert)``, then ``("delta", text)``..., then ``("answer", Answer)``; or ``("error", fields)``
        (an :class:`APIError`'s) at any point. Cancelling the call cancels the request's rows."""
        from ray import serve

        name = serve.get_multiplexed_model_id()
        try:
            await self.load_expert(name)
            reply = await self.backend.open(request)  # ``auto`` is routed again here: its confidence, its mixture
            expert = reply.stream.plan.expert.name
            if expert not in self.experts:  # a near tie the ingress's router broke the other way: take its choice
                reply.cancel()
                reply = await self.backend.open(dataclasses.replace(request, expert=name))
                expert = name
            if expert != name:  # another expert of this base (a near tie): registered with the multiplexer too
                await self.load_expert(expert)
        except AsymmetryError as exc:
            yield "error", from_engine_error(exc, request).fields()
            return
        except APIError as exc:
            yield "error", exc.fields()
            return
        try:
            yield "started", expert
            async for delta in reply:
                yield "delta", delta
            reply.answer.stats["replica"] = self.replica  # which replica answered (the response's asymmetry.stats)
            yield "answer", reply.answer
        except APIError as exc:
            yield "error", exc.fields()
        finally:  # the ingress cancelled the call (its client left): free the rows
            if reply.answer is None:
                reply.cancel()

    async def stats(self) -> dict[str, Any]:
        return {"replica": self.replica, "experts": list(self.loaded), "batch": (await self.backend.health())["batch"],
                "steps": dict(self.steps)}

    async def __del__(self) -> None:
        await self.backend.shutdown()


# -- the ingress: the shared HTTP layer over deployment handles ------------------------------------------------------


class RayReply:
    """One request streamed from a base replica through a deployment handle."""

    def __init__(self, response, request: Request):
        self.response, self.request = response, request  # a DeploymentResponseGenerator
        self.answer: Answer | None = None

    async def _next(self) -> tuple[str, Any]:
        from ray.serve.exceptions import RequestCancelledError

        try:
            kind, value = await self.response.__anext__()
        except StopAsyncIteration:
            raise APIError(500, "the model replica ended the stream without an answer", "server_error") from None
        except RequestCancelledError:
            return "cancelled", None
        if kind == "error":
            raise APIError(**value)
        return kind, value

    async def started(self) -> None:
        """Wait until the replica has planned the request and it joined the batch (or raise its error)."""
        try:
            kind, _ = await self._next()
        except BaseException:
            self.response.cancel()
            raise
        if kind != "started":
            raise APIError(499, "the client closed the request", code="client_closed_request")

    async def __aiter__(self) -> AsyncIterator[str]:
        try:
            while True:
                kind, value = await self._next()
                if kind == "delta":
                    yield value
                    continue
                if kind == "answer":
                    self.answer = value
                return
        finally:
            if self.answer is None:
                self.response.cancel()

    def cancel(self) -> None:
        self.response.cancel()


class RayBackend:
    """Decode on the base deployments: route here, then stream through the handle of the expert's base."""

    def __init__(self, engine: Engine, handles: dict[str, Any], groups: dict[str, list[str]]):
        self.engine, self.handles = engine, handles
        self.base_of = {expert: base for base, names in groups.items() for expert in names}
        self.names = {base: deployment_name(i, base) for i, base in enumerate(groups)}
        self.on_step = None
        self.seen_steps: dict[str, dict[int, int]] = {}  # per replica: the steps already in the histogram

    async def startup(self, settings: ServerSettings, on_step) -> None:
        self.on_step = on_step
        if settings.preload:  # what routing and embeddings need here; the base replicas preload their own
            await anyio.to_thread.run_sync(lambda: (self.engine.embedder.model, self.engine.router))

    async def shutdown(self) -> None:
        return None

    def _route(self, request: Request) -> str:
        """The expert that will answer: the request's, or the router's choice for ``auto`` (as the engine routes)."""
        if request.expert not in (None, AUTO):
            return request.expert
        question = request.question.strip()
        if not question:  # the replica's engine answers with the proper error
            return self.engine.experts.default
        vector = self.engine.embedder.encode([self.engine.without_controls(question)])  # (1, D), as the replica's
        return self.engine.router.route_batch(vector)[0].expert

    async def open(self, request: Request) -> Reply:
        try:
            expert = await anyio.to_thread.run_sync(self._route, request)
        except AsymmetryError as exc:
            raise from_engine_error(exc, request) from exc
        handle = self.handles[self.base_of[expert]].options(stream=True, multiplexed_model_id=expert)
        reply = RayReply(handle.generate.remote(request), request)
        await reply.started()
        return reply

    async def health(self) -> dict[str, Any]:
        """The batch state summed over the bases (one replica of each answers), the experts each has loaded."""
        total = {"waiting": 0, "running": 0, "rows": 0, "steps": 0, "forwards": 0}
        bases = {}
        for base, handle in self.handles.items():
            state = await handle.stats.remote()
            for key, value in state["batch"].items():
                total[key] = total.get(key, 0) + value
            bases[self.names[base]] = {"base": base, "replica": state["replica"], "experts": state["experts"],
                                       "batch": state["batch"]}
            seen = self.seen_steps.setdefault(state["replica"], {})
            for rows, count in state["steps"].items():
                for _ in range(count - seen.get(rows, 0)):
                    self.on_step(int(rows), 0)
                seen[rows] = count
        return {"batch": total, "bases": bases}


class Ingress:
    """The FastAPI app of ``asymmetry/server.py`` with a :class:`RayBackend` (built on the replica)."""

    def __init__(self, config: Config, settings: ServerSettings, handles: dict[str, Any],
                 groups: dict[str, list[str]]):
        self.engine = Engine(config)
        self.settings, self.handles, self.groups = settings, handles, groups

    def __serve_build_asgi_app__(self):
        return create_app(self.engine, self.settings, backend=RayBackend(self.engine, self.handles, self.groups))


# -- the application -------------------------------------------------------------------------------------------------


def build_app(config: Config, settings: ServerSettings, *, replicas: int = 1, cpus: float = 1.0):
    """The Ray Serve application: the ingress bound to one deployment per base (``replicas`` replicas each, with
    ``cpus`` CPUs and a share of the GPUs when the cluster has any: :func:`replica_resources`). Call after
    :func:`asymmetry.cluster.connect`."""
    cluster.require_ray()
    from ray import serve

    if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 1:
        raise AsymmetryError(f"invalid --ray-replicas {replicas!r}: use a positive integer")
    if not cpus > 0:
        raise AsymmetryError(f"invalid --ray-cpus {cpus!r}: use a positive number (fractions share a core)")
    groups = base_groups(Engine(config))
    actor = replica_resources(cpus, replicas * len(groups))
    env = {k: v for k, v in os.environ.items() if k.startswith(ENV_PREFIXES)}
    runtime = {"runtime_env": {"env_vars": env}} if env else {}
    ongoing = settings.max_batch + settings.max_waiting + 8  # every request the batch may hold, and /health calls
    common = {"max_ongoing_requests": ongoing, "graceful_shutdown_timeout_s": settings.shutdown_timeout_s,
              "graceful_shutdown_wait_loop_s": 0.5, "health_check_period_s": 5}
    handles = {}
    for i, (base, experts) in enumerate(groups.items()):
        deployment = serve.deployment(BaseReplica).options(
            name=deployment_name(i, base), num_replicas=replicas,
            ray_actor_options={**actor, **runtime}, **common)
        handles[base] = deployment.bind(config, base, experts, settings)
    ingress = serve.deployment(serve.ingress()(Ingress)).options(
        name=INGRESS, num_replicas=1, ray_actor_options={"num_cpus": 0, **runtime}, **common)
    return ingress.bind(config, settings, handles, groups)


def replica_resources(cpus: float, count: int) -> dict[str, float]:
    """Ray resources of one base replica (``count`` of them in all): ``cpus`` CPUs, and a share of the GPUs when the
    cluster has any (one GPU each while there are enough, else the GPUs split evenly). Replicas that cannot all fit on
    a local Ray fail here, rather than wait for resources that never come."""
    ray = cluster.require_ray()
    res = ray.cluster_resources()
    gpus = float(res.get("GPU", 0))
    if os.environ.get("RAY_ADDRESS") is None and count * cpus > float(res.get("CPU", 0)) + 1e-9:
        raise AsymmetryError(
            f"{count} base replica(s) x --ray-cpus {cpus:g} need {count * cpus:g} CPUs, but this Ray has "
            f"{res.get('CPU', 0):g}: lower --ray-cpus (fractions share a core) or --ray-replicas")
    if gpus:
        return {"num_cpus": cpus, "num_gpus": min(1.0, gpus / count)}
    return {"num_cpus": cpus}


def _check_port_free(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the proxy binds: a closed port in TIME_WAIT is free
        try:
            s.bind((host, port))
        except OSError as exc:
            raise AsymmetryError(f"cannot listen on {host}:{port} ({exc.strerror}): pass a free --port") from None


def _deploy_failure(serve, exc: Exception) -> str:
    """The last error line of the failed deployments' messages (the replica's own exception), else ``exc``'s."""
    text = str(exc)
    with contextlib.suppress(Exception):
        app = serve.status().applications[APP_NAME]
        text = "\n".join([text, *(d.message for d in app.deployments.values() if d.message)])
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    ours = [line for line in lines if "AsymmetryError" in line or "ConfigError" in line]
    errors = [line for line in lines if "Error" in line]
    return (ours or errors or lines or [type(exc).__name__])[-1][:400]


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def serve_on_ray(config: Config, settings: ServerSettings, *, replicas: int = 1, cpus: float = 1.0,
                 num_cpus: int | None = None, say=print) -> None:
    """Deploy the application on ``$RAY_ADDRESS`` or a private local Ray and serve until Ctrl-C or SIGTERM; then
    delete the application (in-flight requests get ``settings.shutdown_timeout_s``) and stop the local Ray."""
    remote = bool(os.environ.get("RAY_ADDRESS"))
    if not remote:
        _check_port_free(settings.host, settings.port)
    ray = cluster.connect(num_cpus)
    from ray import serve

    previous = signal.signal(signal.SIGTERM, _interrupt) if threading.current_thread() is threading.main_thread() \
        else None
    try:
        serve.start(http_options={"host": settings.host, "port": settings.port}, proxy_location="HeadOnly")
        app = build_app(config, settings, replicas=replicas, cpus=cpus)
        say(f"deploying on Ray ({'RAY_ADDRESS' if remote else 'local'}): {INGRESS} + "
            f"{len(base_groups(Engine(config)))} base deployment(s), {replicas} replica(s) each")
        try:
            serve.run(app, name=APP_NAME, route_prefix="/")
        except RuntimeError as exc:  # a replica failed to start (Serve retried it): say why in one line
            raise AsymmetryError(f"Ray Serve could not deploy the application: {_deploy_failure(serve, exc)} "
                                 "(replica logs: /tmp/ray/session_latest/logs/serve/)") from None
        say(f"serving on http://{settings.host}:{settings.port}/v1 (Ray Serve; Ctrl-C stops)")
        threading.Event().wait()
    except KeyboardInterrupt:
        say("shutting down Ray Serve")
    finally:
        with contextlib.suppress(Exception):
            if remote:
                serve.delete(APP_NAME)  # a shared cluster: leave Serve and other applications running
            else:
                serve.shutdown()
        if not remote:
            ray.shutdown()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
