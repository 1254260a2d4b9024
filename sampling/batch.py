"""Continuous batching: a decode batch whose requests join and leave between steps, and the thread that steps it.

The decoding itself is the :class:`~asymmetry.sampling.generator.Generator`'s: the same request layout (primary row,
branch rows, the CFG negative), the same stage chain, token selection, stop handling and statistics. What this
module adds is a batch that lives across requests (llama.cpp's server slots, vLLM's scheduler):

- a request that arrives is prefilled in its own forward (with the other arrivals of that step), and its KV cache is
  merged into the running batch's cache: both are left padded to one width, so every row keeps its own positions and
  an attention mask hides the padding;
- each step runs ONE forward over every row of every running request (rows of different LoRA adapters of one base
  name their adapter per row);
- a request that finishes, or whose consumer cancels it (a client that disconnects), leaves at the next step: its
  rows are dropped from the cache, and cache columns that no remaining row uses are trimmed.

:class:`DecodeBatch` is the synchronous step; :class:`BatchRunner` owns one, a bounded waiting queue and a thread,
and hands out :class:`BatchStream` objects that iterate like a
:class:`~asymmetry.sampling.generator.GenerationStream`.

Shapes: N = rows in the batch, J = rows joining, W = cache width (columns), V = vocabulary, R = rows of one request.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from asymmetry.errors import AsymmetryError
from asymmetry.forward import left_pad
from asymmetry.sampling.config import SamplerConfig
from asymmetry.sampling.generator import Branch, Generation, Generator, _Request
from asymmetry.sampling.kernels import SmallBatchLinear, wants_small_batch
from asymmetry.sampling.logprobs import TextDelta
from asymmetry.sampling.stages import BranchCombiner


class QueueFull(AsymmetryError):
    """The runner's waiting queue is full: try again later (a server answers 429)."""


class Cancelled(AsymmetryError):
    """The request was cancelled before it finished (its consumer closed the stream, or the runner stopped)."""


@dataclass(eq=False)
class _Slot:
    """One request in (or waiting for) the running batch."""

    req: _Request
    config: SamplerConfig
    rows: list[list[int]]  # the prompt of each of its R rows
    rows_kw: list[dict[str, Any]]  # per-row forward kwargs (e.g. adapter_names)
    seed: int
    gen: Generator | None = None  # the generator that laid it out: it selects the request's tokens to the end
    events: queue.Queue = field(default_factory=queue.Queue)
    rng: dict[str, torch.Generator] = field(default_factory=dict)
    cancelled: bool = False
    error: Exception | None = None  # why it stopped early (e.g. the stages filtered out every token)
    logits: torch.Tensor | None = None  # (R, V) from the last forward, not yet sampled
    token: int = 0  # the token fed to its rows by the next forward
    forwards: int = 0
    shared_steps: int = 0  # decode forwards that also carried another request's rows
    max_batch_rows: int = 0
    t_submit: float = field(default_factory=time.perf_counter)
    t_start: float = 0.0
    t_prefill: float = 0.0

    @property
    def n_rows(self) -> int:
        return len(self.rows)


class BatchStream:
    """Iterate for the text deltas of one batched request; afterwards ``result`` holds its Generation.

    ``close()`` cancels it: the runner drops its rows at the next step and a blocked iteration returns (with
    ``result`` None). Safe to call from any thread, also while another thread iterates."""

    def __init__(self, runner: BatchRunner, slot: _Slot):
        self._runner = runner
        self._slot = slot
        self.result: Generation | None = None

    def __iter__(self) -> Iterator[str]:
        while True:
            kind, value = self._slot.events.get()
            if kind == "delta":
                yield value
            elif kind == "done":
                self.result = value
                return
            elif kind == "cancelled":
                return
            else:
                raise value

    def close(self) -> None:
        self._runner.cancel(self._slot)


class DecodeBatch:
    """The running batch of one model: :meth:`join` adds a request, :meth:`step` advances every request by one
    token (prefilling the ones that joined), :meth:`leave` drops one. Not thread-safe: one thread steps it."""

    def __init__(self, generator: Generator, row_defaults: dict[str, Any] | None = None):
        self.gen = generator
        self.row_defaults = dict(row_defaults or {})  # per-row kwarg values for rows that do not name one
        self.slots: list[_Slot] = []  # running requests, in row order
        self.cache = None
        self.mask: torch.Tensor | None = None  # (N, W)
        self.pos: torch.Tensor | None = None  # (N, 1) position of each row's last token
        self.steps = 0
        self.forwards = 0

    @property
    def n_rows(self) -> int:
        return sum(s.n_rows for s in self.slots)

    # -- joining and leaving -----------------------------------------------------------------------------------------
    def join(self, slots: Sequence[_Slot]) -> None:
        """Prefill ``slots`` in one forward and merge their cache into the batch; their first logits are ready."""
        if not slots:
            return
        rows = [r for s in slots for r in s.rows]
        rows_kw = [kw for s in slots for kw in s.rows_kw]
        t0 = time.perf_counter()
        ids, mask, pos = left_pad(rows, self.gen.pad_id, self.gen.device)  # (J, L) each
        with torch.inference_mode():
            logits, cache = self.gen._forward(ids, mask, pos, None, self._forward_kwargs(rows_kw))  # (J, V)
        elapsed = time.perf_counter() - t0
        self.forwards += 1
        start = 0
        for s in slots:
            s.logits = logits[start: start + s.n_rows]  # (R, V)
            s.forwards += 1
            s.t_start, s.t_prefill = t0, elapsed
            start += s.n_rows
        pos = pos[:, -1:]  # (J, 1)
        if self.cache is None:
            self.cache, self.mask, self.pos = cache, mask, pos
        else:
            self._merge(cache, mask, pos)
        self.slots.extend(slots)

    def _merge(self, cache, mask: torch.Tensor, pos: torch.Tensor) -> None:
        """Append the joiners' cache rows to the batch cache, both left padded to one width."""
        width = max(self.mask.shape[1], mask.shape[1])
        for mine, theirs in zip(self.cache.layers, cache.layers):
            if getattr(mine, "is_sliding", False):
                raise AsymmetryError("continuous batching needs a full KV cache; this model uses a sliding-window "
                                     "cache: serve it without batching")
            mine.keys = torch.cat([_pad_left(mine.keys, width), _pad_left(theirs.keys, width)])  # (N+J, H, W, D)
            mine.values = torch.cat([_pad_left(mine.values, width), _pad_left(theirs.values, width)])
        self.mask = torch.cat([_pad_left(self.mask, width, dim=1), _pad_left(mask, width, dim=1)])  # (N+J, W)
        self.pos = torch.cat([self.pos, pos])  # (N+J, 1)

    def leave(self, gone: Sequence[_Slot]) -> None:
        """Drop the rows of ``gone`` from the batch and trim cache columns no remaining row attends to."""
        gone = set(gone)
        if not gone:
            return
        keep, row = [], 0
        for s in self.slots:
            if s not in gone:
                keep.extend(range(row, row + s.n_rows))
            row += s.n_rows
        self.slots = [s for s in self.slots if s not in gone]
        if not self.slots:
            self.cache = self.mask = self.pos = None
            return
        index = torch.tensor(keep, device=self.mask.device)
        self.mask, self.pos = self.mask[index], self.pos[index]  # (N', W), (N', 1)
        used = self.mask.any(dim=0).nonzero()
        first = int(used[0]) if len(used) else 0
        self.mask = self.mask[:, first:]
        for layer in self.cache.layers:
            cache_index = index.to(layer.keys.device)
            layer.keys = layer.keys[cache_index][:, :, first:]  # (N', H, W', D)
            layer.values = layer.values[cache_index][:, :, first:]

    # -- one step ----------------------------------------------------------------------------------------------------
    def step(self, emit: Callable[[_Slot, str], None]) -> list[_Slot]:
        """Sample one token for every running request, then run one forward over all remaining rows.
        ``emit(slot, delta)`` receives text as it becomes final; returns the requests that finished."""
        finished: list[_Slot] = []
        for s in self.slots:
            req, gen = s.req, s.gen or self.gen
            try:
                token, surprise = gen._select(req, s.logits, s.config, s.rng)
            except AsymmetryError as exc:  # this request's stages failed: it alone leaves
                s.error = exc
                finished.append(s)
                continue
            req.chain.accept(token)
            delta = gen._advance(req, token, surprise, s.config)
            s.token, s.logits = token, None
            if delta or isinstance(delta, TextDelta):  # a TextDelta may carry log-probabilities without text
                emit(s, delta)
            if req.finish_reason is not None:
                finished.append(s)
        self.leave(finished)
        if self.slots:
            self._decode()
        self.steps += 1
        return finished

    def _decode(self) -> None:
        n = self.n_rows
        ids = torch.tensor([[s.token] for s in self.slots for _ in range(s.n_rows)])  # (N, 1)
        kwargs = self._forward_kwargs([kw for s in self.slots for kw in s.rows_kw])
        pending = self._pending_prefills()
        if pending:  # a control token switched a CFG negative: those rows restart within this step's forward
            ids_in, self.mask, step_pos = self.gen._prefill_step(ids, self.mask, self.pos, pending)  # (N, L) ...
            with torch.inference_mode():
                logits, self.cache = self.gen._forward(ids_in.to(self.gen.device), self.mask, step_pos, self.cache,
                                                       kwargs)  # (N, V)
            self.pos = step_pos[:, -1:]  # (N, 1)
        else:
            self.mask = torch.cat([self.mask, self.mask.new_ones(n, 1)], dim=1)  # (N, W+1)
            self.pos = self.pos + 1  # (N, 1)
            small = wants_small_batch(n, self.gen.device, self.gen._dtype())  # see sampling/kernels.py
            with torch.inference_mode(), SmallBatchLinear() if small else contextlib.nullcontext():
                logits, self.cache = self.gen._forward(ids.to(self.gen.device), self.mask, self.pos, self.cache,
                                                       kwargs)  # (N, V)
        self.forwards += 1
        start = 0
        shared = len(self.slots) > 1
        for s in self.slots:
            s.logits = logits[start: start + s.n_rows]  # (R, V)
            s.forwards += 1
            s.shared_steps += shared
            s.max_batch_rows = max(s.max_batch_rows, n)
            start += s.n_rows

    def _pending_prefills(self) -> dict[int, list[int]]:
        """Rows (batch indices) that the generator asked to prefill anew (``_Request.prefill``, set when a generated
        control token changes the CFG negative; sampling/controls.py), emptied as they are taken."""
        pending, start = {}, 0
        for s in self.slots:
            prefill = getattr(s.req, "prefill", None)
            if prefill:
                pending.update({start + row: seq for row, seq in prefill.items()})
                s.req.prefill = {}
            start += s.n_rows
        return pending

    def _forward_kwargs(self, rows_kw: list[dict[str, Any]]) -> dict[str, Any]:
        """Per-row kwargs as lists over the rows; a row that does not name a key gets ``row_defaults[key]``."""
        keys = {k for kw in rows_kw for k in kw}
        filled = [{**{k: self.row_defaults[k] for k in keys if k in self.row_defaults}, **kw} for kw in rows_kw]
        return Generator._per_row_kwargs(filled, {})


def _pad_left(t: torch.Tensor, width: int, dim: int = -2) -> torch.Tensor:
    """``t`` with zeros prepended along ``dim`` up to ``width``."""
    missing = width - t.shape[dim]
    if missing <= 0:
        return t
    shape = list(t.shape)
    shape[dim] = missing
    return torch.cat([t.new_zeros(shape), t], dim=dim)


def new_slot(gen: Generator, prompt: str | list[int], config: SamplerConfig, *, negative_prompt=None,
             branches: Sequence[Branch] = (), combiner: BranchCombiner | None = None,
             row_kwargs: dict[str, Any] | None = None, stop: Sequence[str] | None = None,
             emit_controls: bool | None = None) -> _Slot:
    """One request laid out as the generator lays out a batch of one: its rows, chain, seed and stop strings."""
    if not isinstance(config, SamplerConfig):
        raise AsymmetryError(f"config must be a SamplerConfig, got {type(config).__name__}")
    gen._check_branches(branches, combiner)
    negative = negative_prompt if negative_prompt is not None else config.negative_prompt
    seed = config.seed if config.seed is not None else int.from_bytes(os.urandom(4), "little")
    stops = list(config.stop) + list(stop or [])
    rows, rows_kw, (req,) = gen._layout([prompt], config, negative, branches, combiner, row_kwargs, seed, stops,
                                        emit_controls)
    return _Slot(req, config, rows, rows_kw, seed, gen)


class BatchRunner:
    """A thread that steps one :class:`DecodeBatch`; requests :meth:`submit` from any thread.

    ``max_rows``: rows in the running batch (a CFG request takes 2); a request that does not fit waits. ``max_waiting``:
    requests that may wait; one more raises :class:`QueueFull`. ``model_source``: called before each step for the
    model to run (a pooled base that gains an adapter becomes a peft model). ``on_step(rows, requests)``: called after
    each decode step (metrics).
    """

    def __init__(self, generator: Generator, *, max_rows: int = 16, max_waiting: int = 64,
                 model_source: Callable[[], Any] | None = None, row_defaults: dict[str, Any] | None = None,
                 on_step: Callable[[int, int], None] | None = None, name: str = "batch"):
        if max_rows < 1 or max_waiting < 0:
            raise AsymmetryError(f"max_rows={max_rows}, max_waiting={max_waiting}: use max_rows >= 1, max_waiting >= 0")
        self.gen = generator
        self.batch = DecodeBatch(generator, row_defaults)
        self.max_rows, self.max_waiting = max_rows, max_waiting
        self._model_source = model_source
        self._on_step = on_step
        self._waiting: deque[_Slot] = deque()
        self._cancelled: set[_Slot] = set()
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name=f"asymmetry-{name}", daemon=True)
        self._thread.start()

    def __repr__(self) -> str:
        return f"BatchRunner({self.stats()})"

    def stats(self) -> dict[str, int]:
        with self._cond:
            return {"waiting": len(self._waiting), "running": len(self.batch.slots), "rows": self.batch.n_rows,
                    "steps": self.batch.steps, "forwards": self.batch.forwards}

    def submit(self, prompt: str | list[int], config: SamplerConfig, *, negative_prompt=None,
               branches: Sequence[Branch] = (), combiner: BranchCombiner | None = None,
               row_kwargs: dict[str, Any] | None = None, stop: Sequence[str] | None = None,
               emit_controls: bool | None = None) -> BatchStream:
        """Queue one request (options as in :meth:`Generator.generate`). Its prompt, grammar and branches are
        checked here, in the caller's thread, so a bad request fails before it waits."""
        slot = new_slot(self.gen, prompt, config, negative_prompt=negative_prompt, branches=branches,
                        combiner=combiner, row_kwargs=row_kwargs, stop=stop,
                        emit_controls=emit_controls)  # the newest generator
        with self._cond:
            if self._closed:
                raise AsymmetryError("the batch runner is stopped: the server is shutting down")
            if len(self._waiting) >= self.max_waiting and self._busy():
                raise QueueFull(f"{len(self._waiting)} requests are already waiting: try again in a few seconds")
            self._waiting.append(slot)
            self._cond.notify()
        return BatchStream(self, slot)

    def use_generator(self, generator: Generator) -> None:
        """Lay out the requests submitted from now on with ``generator`` (the engine's, once its base gained the
        control tokens) and run the batch's forwards through it. Requests already submitted keep the generator that
        laid them out for selecting their tokens (it draws from the vocabulary they started with)."""
        with self._cond:
            self.gen = generator

    def _busy(self) -> bool:
        return bool(self.batch.slots) or bool(self._waiting)

    def cancel(self, slot: _Slot) -> None:
        with self._cond:
            if slot.cancelled:
                return
            slot.cancelled = True
            if slot in self._waiting:
                self._waiting.remove(slot)
            else:
                self._cancelled.add(slot)
            self._cond.notify()
        slot.events.put(("cancelled", None))

    def close(self, timeout: float = 10.0) -> None:
        """Stop: waiting and running requests are cancelled (their streams end), the thread exits."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout)

    # -- the thread --------------------------------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._closed and not self._waiting and not self.batch.slots:
                    self._cond.wait()
                if self._closed:
                    break
                gone, self._cancelled = self._cancelled, set()
                joining = self._admit()
            try:
                self._step(gone, joining)
            except Exception as exc:  # noqa: BLE001 -- a failing forward fails every request in it, the runner goes on
                for s in self.batch.slots + joining:
                    s.events.put(("error", exc if isinstance(exc, AsymmetryError) else
                                  AsymmetryError(f"decoding failed: {type(exc).__name__}: {exc}")))
                self.batch = DecodeBatch(self.gen, self.batch.row_defaults)
        with self._cond:
            left = list(self._waiting) + self.batch.slots
            self._waiting.clear()
        for s in left:
            s.events.put(("error", Cancelled("the server stopped before this request finished")))
        self.batch = DecodeBatch(self.gen, self.batch.row_defaults)

    def _admit(self) -> list[_Slot]:
        """Waiting requests that fit in the batch, first come first served (called holding the condition)."""
        rows = self.batch.n_rows
        joining = []
        while self._waiting and (rows + self._waiting[0].n_rows <= self.max_rows or rows == 0):
            slot = self._waiting.popleft()
            rows += slot.n_rows
            joining.append(slot)
        return joining

    def _step(self, gone: set[_Slot], joining: list[_Slot]) -> None:
        batch = self.batch
        with self._cond:
            batch.gen = self.gen
        if self._model_source is not None:
            batch.gen.model = self._model_source()
        batch.leave([s for s in batch.slots if s in gone])
        batch.join(joining)
        finished = batch.step(lambda s, delta: s.events.put(("delta", delta)))
        now = time.perf_counter()
        for s in finished:
            if s.error is not None:
                s.events.put(("error", s.error))
                continue
            req = s.req
            stats = s.gen._stats(req, s.seed, s.n_rows, s.forwards, s.t_prefill, now - s.t_start)
            stats.update(queue_s=s.t_start - s.t_submit, shared_steps=s.shared_steps, max_batch_rows=s.max_batch_rows)
            s.events.put(("done", Generation(req.text, list(req.tokens), stats, req.logprob_entries())))
        if self._on_step is not None and batch.slots:
            self._on_step(batch.n_rows, len(batch.slots))
