"""Evaluations on Ray (``asymmetry eval mc|qa --ray``): the questions split across actors, each holding the pipeline
once (one :class:`Engine` of the run's config: router, index, experts), the answers merged back in question order.

The driver keeps everything a local run keeps: it reads the input, checks the resume log, appends each block's
predictions to ``predictions.jsonl`` (fsynced) as it comes back in question order, and writes ``submission.csv``,
``report.json`` and the plot. So a killed ``--ray`` run resumes (locally or on Ray) from the blocks it saved, and
the outputs are those of a local run. Blocks are whole multiples of ``batch_size`` questions, so a worker scores
the same batches a local run would (multiple-choice scores are then equal up to float rounding).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from asymmetry.cluster import connect, get, worker_options, workers
from asymmetry.engine import Engine

log = logging.getLogger(__name__)

BATCHES_PER_BLOCK = 2  # a block of questions is this many scoring batches
EVAL = "evaluation"


class EvalWorker:
    """One Ray actor holding the pipeline of ``config`` once (its :class:`Engine`); answers blocks of questions."""

    def __init__(self, config):
        self.engine = Engine(config)

    def run(self, fn: Callable[..., tuple[list[dict], dict[str, float]]], block: list, *args):
        """``fn(engine, block, *args)``: a block's (records, stage timings)."""
        return fn(self.engine, block, *args)


def map_blocks(config, fn: Callable[..., tuple[list[dict], dict[str, float]]], items: Sequence[Any], batch_size: int,
               args: tuple, num_workers: int | None, timings: dict[str, float]) -> Iterator[list[dict]]:
    """Records of ``items`` block by block, in order: ``fn(engine, block, *args)`` on ``num_workers``
    :class:`EvalWorker` actors (``fn`` a module-level function, sent by reference); the workers' stage timings are
    added to ``timings``."""
    if not items:
        return
    ray = connect()
    n = min(workers(num_workers), -(-len(items) // batch_size))  # no idle worker loading a model for nothing
    remote = ray.remote(**worker_options())(EvalWorker)
    actors = [remote.remote(config) for _ in range(n)]
    size = batch_size * BATCHES_PER_BLOCK
    blocks = [list(items[i : i + size]) for i in range(0, len(items), size)]
    log.info("evaluating %d questions on Ray: %d workers, %d blocks", len(items), n, len(blocks))
    started = time.perf_counter()
    pending: deque = deque()
    try:
        for i, block in enumerate(blocks):
            pending.append(actors[i % n].run.remote(fn, block, *args))
            if len(pending) >= 2 * n:
                yield _merge(get(pending.popleft(), EVAL), timings)
        while pending:
            yield _merge(get(pending.popleft(), EVAL), timings)
    finally:
        for a in actors:
            ray.kill(a)
    timings["ray_wall"] = timings.get("ray_wall", 0.0) + time.perf_counter() - started


def _merge(result: tuple[list[dict], dict[str, float]], timings: dict[str, float]) -> list[dict]:
    records, worker_timings = result
    for stage, secs in worker_timings.items():
        timings[stage] = timings.get(stage, 0.0) + secs
    return records
