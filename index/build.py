"""Sharded, resumable index builds.

Layout of an index folder::

    manifest.json      written last: its presence marks a complete index
    index.faiss        the FAISS index (flat, HNSW or IVF-PQ), FAISS id = passage id
    passages.sqlite    the passage store keyed by FAISS id
    bm25/              the bm25s lexical index over the same passages
    .build/            work area: spec.json and shard-NNNNN.{npy,jsonl} (embedded passages, kept for rebuilds)

The corpus is streamed and chunked deterministically, so shard ``i`` always holds the same passages. A shard is
written atomically (vectors first, then passages; the ``.jsonl`` marks it finished). Rerunning an interrupted build
skips finished shards and continues with the next one. The final files are assembled in ``.build/`` and only then
moved in; an existing complete index stays usable until the new one replaces it.

Shapes: N passages, D embedding dimensions, B a batch of passages.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from asymmetry.index import manifest as mf
from asymmetry.index.chunking import Chunk, ChunkingConfig, chunk_articles
from asymmetry.index.corpus import open_corpus
from asymmetry.index.embedding import embedding_model_name, load_embedder
from asymmetry.index.faiss_index import choose_index_type, create_index

from asymmetry.errors import AsymmetryError

log = logging.getLogger(__name__)

DEFAULT_SHARD_SIZE = 4096
TRAIN_SAMPLE = 256 * 1024  # IVF-PQ training vectors (at most)


def bm25_tokenize(texts: list[str], show_progress: bool = False, return_ids: bool = True):
    """The one lexical tokenizer, shared by index build and retrieval (English stopwords, Snowball stemmer)."""
    import bm25s
    import Stemmer

    return bm25s.tokenize(texts, stopwords="en", stemmer=Stemmer.Stemmer("english"),
                          show_progress=show_progress, return_ids=return_ids)


LEXICAL_SPEC = {"library": "bm25s", "stopwords": "en", "stemmer": "snowball-english", "method": "lucene"}


def embed_passages(texts: list[str], model: str | None = None, batch_size: int = 64, progress=None) -> np.ndarray:
    """Normalised float32 embeddings (N, D), longest-first in blocks so the progress bar moves while padding stays
    minimal (sentence-transformers sorts within each call; sorting the whole shard keeps that benefit)."""
    embedder = load_embedder(model)
    order = np.argsort([-len(t) for t in texts], kind="stable")
    out = np.empty((len(texts), embedder.get_embedding_dimension()), dtype=np.float32)  # (N, D)
    block = batch_size * 8
    for start in range(0, len(texts), block):
        idx = order[start : start + block]
        vecs = embedder.encode([texts[i] for i in idx], batch_size=batch_size, normalize_embeddings=True,
                               convert_to_numpy=True, show_progress_bar=False)  # (B, D)
        out[idx] = vecs
        if progress is not None:
            progress.update(len(idx))
    return out


def _shard_paths(work: Path, i: int) -> tuple[Path, Path]:
    return work / f"shard-{i:05d}.npy", work / f"shard-{i:05d}.jsonl"


def _save_shard(work: Path, i: int, chunks: list[Chunk], vectors: np.ndarray) -> None:
    npy, jsonl = _shard_paths(work, i)
    tmp = npy.with_name(npy.name + ".tmp")
    with open(tmp, "wb") as fh:
        np.save(fh, vectors)
    os.replace(tmp, npy)
    tmp = jsonl.with_name(jsonl.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.writelines(json.dumps({"title": c.title, "text": c.text, "url": c.url, "metadata": c.metadata},
                                ensure_ascii=False) + "\n" for c in chunks)
    os.replace(tmp, jsonl)


def _shard_done(work: Path, i: int, expected: int) -> bool:
    npy, jsonl = _shard_paths(work, i)
    if not (npy.is_file() and jsonl.is_file()):
        return False
    try:
        rows = np.load(npy, mmap_mode="r").shape[0]
    except (ValueError, OSError):
        return False
    return rows == expected


def _batched(chunks: Iterator[Chunk], size: int) -> Iterator[list[Chunk]]:
    batch: list[Chunk] = []
    for c in chunks:
        batch.append(c)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def build_spec(corpus_desc: dict, model_name: str, chunking: ChunkingConfig, shard_size: int) -> dict:
    corpus_key = {k: corpus_desc[k] for k in ("source", "reader", "bytes", "sha256")}
    return {"format_version": mf.FORMAT_VERSION, "corpus": corpus_key, "embedding_model": model_name,
            "chunking": asdict(chunking), "shard_size": shard_size, "lexical": LEXICAL_SPEC,
            "store": {"minhash": "word-3-gram x64"}}


def build_index(
    corpus: str = "default",
    index_dir: str | os.PathLike | None = None,
    index_type: str = "auto",
    embedding_model: str | None = None,
    batch_size: int = 64,
    shard_size: int = DEFAULT_SHARD_SIZE,
    chunking: ChunkingConfig | None = None,
    index_params: dict | None = None,
    rebuild: bool = False,
    progress: bool = True,
) -> mf.Manifest:
    """Build (or resume, or confirm up to date) the index for ``corpus`` in ``index_dir``; returns its manifest."""
    chunking = chunking or ChunkingConfig()
    root = mf.resolve_index_dir(index_dir)
    root.mkdir(parents=True, exist_ok=True)
    source = open_corpus(corpus)
    model_name = embedding_model_name(embedding_model)
    spec = build_spec(source.describe(), model_name, chunking, shard_size)

    with _build_lock(root):
        return _build_locked(source, root, spec, model_name, index_type, embedding_model, batch_size, shard_size,
                             chunking, index_params, rebuild, progress)


@contextmanager
def _build_lock(root: Path):
    """One build per index folder at a time (another process waits, then finds the index up to date)."""
    import fcntl

    (root / mf.WORK_DIR).mkdir(exist_ok=True)
    with open(root / mf.WORK_DIR / "lock", "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.warning("another process is building %s: waiting for it to finish", root)
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _build_locked(source, root: Path, spec: dict, model_name: str, index_type: str, embedding_model, batch_size: int,
                  shard_size: int, chunking: ChunkingConfig, index_params, rebuild: bool, progress: bool):
    from tqdm.auto import tqdm

    existing = mf.read_manifest(root)
    if existing is not None and not rebuild:
        same = existing.build == spec and index_type in ("auto", existing.index_type) and not index_params
        if same:
            log.info("index in %s is up to date", root)
            return existing
        raise AsymmetryError(
            f"{root} already holds a complete index ({existing.index_type}, {existing.passage_count} passages of "
            f"{existing.corpus.get('source')}, embedded with {existing.embedding_model}) that differs from this "
            "build: pass --rebuild to replace it (it stays usable until the new one is complete) or choose another "
            "--index-dir"
        )

    work = root / mf.WORK_DIR
    work.mkdir(exist_ok=True)
    spec_path = work / "spec.json"
    if spec_path.is_file():
        try:
            old = json.loads(spec_path.read_text(encoding="utf-8"))
        except ValueError:
            old = None
        if old != spec:
            log.warning("discarding embedding shards of a different build in %s", work)
            for f in work.glob("shard-*"):
                f.unlink()
    tmp = spec_path.with_name("spec.json.tmp")
    tmp.write_text(json.dumps(spec, indent=2), encoding="utf-8")
    os.replace(tmp, spec_path)

    # 1. stream, chunk and embed shard by shard (finished shards are skipped)
    n_passages = n_articles = n_shards = resumed = 0
    started = time.perf_counter()
    embedded = 0

    def counted_articles():
        nonlocal n_articles
        for a in source:
            n_articles += 1
            yield a

    bar = tqdm(desc=f"embedding {source.source}", unit=" passages", disable=not progress, dynamic_ncols=True)
    try:
        for i, chunks in enumerate(_batched(chunk_articles(counted_articles(), chunking), shard_size)):
            n_shards += 1
            n_passages += len(chunks)
            if _shard_done(work, i, len(chunks)):
                resumed += 1
                bar.set_postfix_str(f"shard {i}: done earlier, skipped")
                continue
            vectors = embed_passages([c.indexed_text for c in chunks], embedding_model, batch_size, bar)  # (B, D)
            embedded += len(chunks)
            _save_shard(work, i, chunks, vectors)
            bar.set_postfix_str(f"shard {i} saved")
    finally:
        bar.close()
    if n_passages == 0:
        raise AsymmetryError(
            f"corpus {source.source} yielded no passages ({n_articles} articles with text): pass a corpus with "
            "non-empty articles (JSONL/Parquet need title and text; dumps need main-namespace pages)"
        )
    secs = time.perf_counter() - started
    if resumed:
        log.warning("resumed: %d of %d shards were already embedded", resumed, n_shards)
    log.info("embedded %d passages in %.1fs (%.0f passages/s)", embedded, secs, embedded / max(secs, 1e-9))

    # 2. assemble the FAISS index, the passage store and the lexical index in the work area
    dim = int(np.load(_shard_paths(work, 0)[0], mmap_mode="r").shape[1])
    kind = choose_index_type(n_passages, index_type)
    train = _training_sample(work, n_shards, n_passages) if kind == "ivfpq" else None
    index, params = create_index(kind, dim, n_passages, index_params, train)
    for i in tqdm(range(n_shards), desc=f"adding to {kind} index", unit=" shards", disable=not progress):
        index.add(np.ascontiguousarray(np.load(_shard_paths(work, i)[0]), dtype=np.float32))  # (B, D)
    import faiss

    staged = work / "staged"
    if staged.exists():
        shutil.rmtree(staged)
    staged.mkdir()
    faiss.write_index(index, str(staged / mf.FAISS_NAME))
    del index
    names = [mf.FAISS_NAME, mf.STORE_NAME, mf.BM25_DIR]
    if kind == "ivfpq" and params.get("refine"):
        _write_vectors(work, n_shards, n_passages, dim, staged / mf.VECTORS_NAME)
        names.append(mf.VECTORS_NAME)

    from asymmetry.index.store import write_store

    write_store(staged / mf.STORE_NAME, _shard_rows(work, n_shards))
    _build_bm25(work, n_shards, staged / mf.BM25_DIR, progress)

    # 3. swap in: the old manifest goes first (the folder is incomplete while files move), the new one last
    (root / mf.MANIFEST_NAME).unlink(missing_ok=True)
    (root / mf.VECTORS_NAME).unlink(missing_ok=True)  # a previous IVF-PQ build's vectors
    for name in names:
        target = root / name
        if target.is_dir():
            shutil.rmtree(target)
        os.replace(staged / name, target)
    staged.rmdir()
    manifest = mf.Manifest(
        format_version=mf.FORMAT_VERSION, embedding_model=model_name, embedding_dim=dim, index_type=kind,
        index_params=params, passage_count=n_passages, article_count=n_articles, corpus=source.describe(),
        chunking=asdict(chunking), lexical=LEXICAL_SPEC, build=spec,
        files=mf.file_entries(root, names),
        created=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    mf.write_manifest(root, manifest)
    return manifest


def _write_vectors(work: Path, n_shards: int, n: int, dim: int, out: Path) -> None:
    """All passage vectors as one (N, D) float32 .npy, for IVF-PQ's exact re-ranking (memory-mapped at search)."""
    vectors = np.lib.format.open_memmap(out, mode="w+", dtype=np.float32, shape=(n, dim))  # (N, D)
    start = 0
    for i in range(n_shards):
        block = np.load(_shard_paths(work, i)[0], mmap_mode="r")  # (B, D)
        vectors[start: start + len(block)] = block
        start += len(block)
    vectors.flush()
    del vectors


def _shard_rows(work: Path, n_shards: int):
    pid = 0
    for i in range(n_shards):
        with open(_shard_paths(work, i)[1], encoding="utf-8") as fh:
            for line in fh:
                rec = json.loads(line)
                yield pid, rec["title"], rec["text"], rec["url"], rec["metadata"]
                pid += 1


def _training_sample(work: Path, n_shards: int, n: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    take = min(n, TRAIN_SAMPLE)
    parts = []
    for i in range(n_shards):
        vecs = np.load(_shard_paths(work, i)[0], mmap_mode="r")  # (B, D)
        m = max(1, round(take * len(vecs) / n))
        parts.append(np.asarray(vecs[np.sort(rng.choice(len(vecs), size=min(m, len(vecs)), replace=False))]))
    return np.concatenate(parts)  # (T, D)


def _build_bm25(work: Path, n_shards: int, out: Path, progress: bool) -> None:
    import bm25s

    texts = []
    for i in range(n_shards):
        with open(_shard_paths(work, i)[1], encoding="utf-8") as fh:
            texts.extend(f"{r['title']}\n{r['text']}" for r in map(json.loads, fh))
    tokens = bm25_tokenize(texts, show_progress=progress)
    model = bm25s.BM25(method=LEXICAL_SPEC["method"])
    model.index(tokens, show_progress=progress)
    model.save(str(out))
