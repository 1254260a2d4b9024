"""Embedding shards: the resumable unit of an index build (``.build/shard-NNNNN.{npy,jsonl,json}``).

A shard is written atomically (vectors first, then passages, then its record with both files' SHA-256: the record
marks it finished). Local builds (:mod:`asymmetry.index.build`) and Ray builds (:mod:`asymmetry.index.distributed`)
write and check shards with the same functions, so either resumes the other's work.

Shapes: N passages, D embedding dimensions, B a batch of passages.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from asymmetry.atomic import atomic_path, atomic_write_json, atomic_write_text
from asymmetry.embedder import Embedder
from asymmetry.index.chunking import Chunk
from asymmetry.integrity import sha256_file

log = logging.getLogger(__name__)


def embed_passages(texts: list[str], embedder: Embedder, batch_size: int = 64, progress=None) -> np.ndarray:
    """Normalised float32 embeddings (N, D), longest-first in blocks so the progress bar moves while padding stays
    minimal (sentence-transformers sorts within each call; sorting the whole shard keeps that benefit)."""
    order = np.argsort([-len(t) for t in texts], kind="stable")
    out: np.ndarray | None = None  # (N, D), allocated once the first block shows D
    block = batch_size * 8
    for start in range(0, len(texts), block):
        idx = order[start : start + block]
        vecs = embedder.encode([texts[i] for i in idx], batch_size=batch_size)  # (B, D)
        if out is None:
            out = np.empty((len(texts), vecs.shape[1]), dtype=np.float32)  # (N, D)
        out[idx] = vecs
        if progress is not None:
            progress.update(len(idx))
    if out is None:
        return np.empty((0, embedder.dimension), dtype=np.float32)  # (0, D)
    return out


def shard_paths(work: Path, i: int) -> tuple[Path, Path]:
    return work / f"shard-{i:05d}.npy", work / f"shard-{i:05d}.jsonl"


def _shard_record_path(work: Path, i: int) -> Path:
    return work / f"shard-{i:05d}.json"


def save_shard(work: Path, i: int, chunks: list[Chunk], vectors: np.ndarray) -> None:
    """Vectors, then passages, then the shard's record (its passage count and both files' SHA-256): the record marks
    a finished shard, and a resumed build reuses the shard only when both files still match it."""
    npy, jsonl = shard_paths(work, i)
    with atomic_path(npy, suffix=".npy") as tmp:
        np.save(tmp, vectors)  # (B, D)
    atomic_write_text(jsonl, "".join(json.dumps({"title": c.title, "text": c.text, "url": c.url,
                                                 "metadata": c.metadata}, ensure_ascii=False) + "\n" for c in chunks))
    sums = {npy.name: sha256_file(npy), jsonl.name: sha256_file(jsonl)}
    atomic_write_json(_shard_record_path(work, i), {"passages": len(chunks), "dim": int(vectors.shape[1]), "sha256": sums})


def _shard_problem(work: Path, i: int, expected: int) -> str | None:
    """Why shard ``i`` cannot be reused (None: it is finished and intact, holding ``expected`` passages)."""
    npy, jsonl = shard_paths(work, i)
    try:
        record = json.loads(_shard_record_path(work, i).read_text(encoding="utf-8"))
        passages, sums = int(record["passages"]), dict(record["sha256"])
    except (OSError, ValueError, KeyError, TypeError):
        return "its record shard-NNNNN.json is missing or damaged"
    if passages != expected:
        return f"it holds {passages} passages, this build puts {expected} in it"
    for f in (npy, jsonl):
        if not f.is_file():
            return f"{f.name} is missing"
        if sha256_file(f) != sums.get(f.name):
            return f"{f.name} does not match its checksum"
    try:
        rows = np.load(npy, mmap_mode="r").shape[0]
    except (ValueError, OSError):
        rows = -1
    with open(jsonl, "rb") as fh:
        lines = sum(1 for _ in fh)
    if rows != expected or lines != expected:
        return f"it holds {rows} vectors and {lines} passages, its record says {expected}"
    return None


def shard_done(work: Path, i: int, expected: int) -> bool:
    """True when shard ``i`` is finished and intact. A shard that exists but fails its checks is re-embedded, with
    a warning naming it; one that was never started (or whose write was cut short) is embedded silently."""
    npy, jsonl = shard_paths(work, i)
    if not (npy.is_file() and jsonl.is_file()):
        return False
    problem = _shard_problem(work, i, expected)
    if problem is None:
        return True
    if _shard_record_path(work, i).is_file():
        log.warning("embedding shard %s is damaged (%s): re-embedding it", npy.with_suffix(""), problem)
    else:
        log.info("shard %s has no record (an interrupted write or an older build): embedding it", npy.with_suffix(""))
    return False


def batched(chunks: Iterator, size: int) -> Iterator[list]:
    batch: list = []
    for c in chunks:
        batch.append(c)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
