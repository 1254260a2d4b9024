"""The embedding step of an index build on Ray (``asymmetry index build --ray``).

The same shards as a local build, made by a pool of Ray actors (one embedder each: a GPU apiece when the cluster
has GPUs, a CPU otherwise). Everything else of the build (FAISS, passage store, BM25, manifest) is assembled by
:mod:`asymmetry.index.build` as for a local build, from the shards this step leaves in ``.build/``.

Who does what:

* the driver reads the corpus's raw records in order (for a dump: the XML pages, cheap) and sends them in blocks;
* a worker *finishes* a block (wikitext cleaning, the costly part of reading a dump) and chunks it; the driver takes
  the chunks back in block order, so shard ``i`` holds exactly the passages it holds in a local build;
* a worker embeds a shard's passages (the shipped default-corpus vectors where they apply, as locally);
* the driver writes each shard as it comes back (vectors, passages, record: the local format), so a build killed
  mid-way resumes from its finished shards, on Ray or locally, and finished shards are never sent again.

Bounded memory: at most ``2 x workers`` blocks and ``2 x workers`` shards are in flight. Ray Core actors are used
rather than a Ray Data pipeline because shard boundaries depend on the order of every passage before them; an
ordered stream of blocks through an actor pool keeps that order with no global shuffle or materialisation.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import asdict
from itertools import cycle
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from asymmetry.cluster import connect, get, worker_options, workers
from asymmetry.embedder import Embedder
from asymmetry.index.chunking import ChunkingConfig, chunk_article
from asymmetry.index.corpus import READERS
from asymmetry.index.prebuilt import embed_with_prebuilt
from asymmetry.index.shards import batched, embed_passages, save_shard, shard_done

log = logging.getLogger(__name__)

BLOCK_RECORDS = 64  # raw corpus records per finishing/chunking call
BUILD = "index build"


class EmbedWorker:
    """One Ray actor: finishes and chunks blocks of raw records, embeds shards. Holds one embedder, loaded on the
    first shard (a worker that only chunks never loads it)."""

    def __init__(self, reader: str, model_name: str, batch_size: int, chunking: dict, backend: str = "torch"):
        self.reader, self.model_name, self.batch_size, self.backend = reader, model_name, batch_size, backend
        self.chunking = ChunkingConfig(**chunking)
        self.embedder = None

    def chunk(self, raws: list[Any]) -> tuple[int, list[Any]]:
        """(articles kept, their chunks in order) for one block of raw records."""
        finish = READERS[self.reader].finish
        articles = [a for a in (finish(r) if finish else r for r in raws) if a is not None]
        return len(articles), [c for a in articles for c in chunk_article(a, self.chunking)]

    def embed(self, texts: list[str]) -> tuple[np.ndarray, int]:
        """(vectors (B, D) float32, how many came from the shipped table) for one shard's indexed texts."""
        if self.embedder is None:
            import torch

            self.embedder = Embedder(self.model_name, device="cuda" if torch.cuda.is_available() else "cpu",
                                     backend=self.backend)
        return embed_with_prebuilt(texts, self.embedder,
                                   lambda t: embed_passages(t, self.embedder, self.batch_size))


def embed_shards_ray(job, shards, num_workers: int | None = None):
    """Step 1 of a build on Ray: fill ``shards`` (a ``build._Shards``) and leave every shard in ``job.work``."""
    ray = connect()
    n = workers(num_workers)
    remote = ray.remote(**worker_options())(EmbedWorker)
    actors = [remote.remote(job.source.reader.name, job.embedder.name, job.batch_size, asdict(job.chunking),
                            job.embedder.backend) for _ in range(n)]
    turns = cycle(actors)  # calls go round the actors in turn
    window = 2 * n
    chunk_refs: deque = deque()  # in block order
    embed_refs: dict = {}  # ObjectRef -> (shard index, its chunks)
    buffer: list = []
    resumed = embedded = 0
    started = time.perf_counter()
    blocks = batched(job.source.records(), BLOCK_RECORDS)
    bar = tqdm(desc=f"embedding {job.source.source} on Ray ({n} workers)", unit=" passages", disable=not job.progress,
               dynamic_ncols=True)

    def collect(block: bool) -> None:
        nonlocal embedded
        if not embed_refs:
            return
        ready, _ = ray.wait(list(embed_refs), num_returns=1 if block else len(embed_refs), timeout=None if block else 0)
        for ref in ready:
            i, chunks = embed_refs.pop(ref)
            vectors, reused = get(ref, BUILD)
            save_shard(job.work, i, chunks, vectors)
            shards.reused += reused
            embedded += len(chunks) - reused
            bar.update(len(chunks))
            bar.set_postfix_str(f"shard {i} saved")

    def cut(chunks: list) -> None:
        nonlocal resumed
        i = shards.count
        shards.count += 1
        shards.passages += len(chunks)
        if shard_done(job.work, i, len(chunks)):
            resumed += 1
            bar.update(len(chunks))
            return
        while len(embed_refs) >= window:
            collect(block=True)
        embed_refs[next(turns).embed.remote([c.indexed_text for c in chunks])] = (i, chunks)

    try:
        exhausted = False
        while True:
            while not exhausted and len(chunk_refs) < window:
                block = next(blocks, None)
                if block is None:
                    exhausted = True
                else:
                    chunk_refs.append(next(turns).chunk.remote(block))
            if not chunk_refs:
                break
            articles, chunks = get(chunk_refs.popleft(), BUILD)
            shards.articles += articles
            buffer.extend(chunks)
            while len(buffer) >= job.shard_size:
                cut(buffer[: job.shard_size])
                buffer = buffer[job.shard_size:]
            collect(block=False)
        if buffer:
            cut(buffer)
        while embed_refs:
            collect(block=True)
    finally:
        bar.close()
        for a in actors:
            ray.kill(a)
    secs = time.perf_counter() - started
    if resumed:
        log.warning("resumed: %d of %d shards were already embedded", resumed, shards.count)
    log.info("embedded %d passages on Ray with %d workers in %.1fs (%.0f passages/s)", embedded, n, secs,
             embedded / max(secs, 1e-9))
    return shards


