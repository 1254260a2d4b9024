"""Sharded, resumable index builds.

Layout of an index folder::

    manifest.json      written last: its presence marks a complete index
    index.faiss        the FAISS index (flat, HNSW or IVF-PQ), FAISS id = passage id
    passages.sqlite    the passage store keyed by FAISS id
    bm25/              the bm25s lexical index over the same passages
    .build/            work area: spec.json and shard-NNNNN.{npy,jsonl} (embedded passages, kept for rebuilds)

:func:`build_index` builds (or resumes, or confirms up to date) one index; :func:`ensure_index` builds the configured
index only when its folder holds none and returns the folder (what ``Retriever.open`` then reads: opening an index
never builds one).

The corpus is streamed and chunked deterministically, so shard ``i`` always holds the same passages. A shard is
written atomically (vectors first, then passages; the ``.jsonl`` marks it finished). Rerunning an interrupted build
skips finished shards and continues with the next one. The final files are assembled in ``.build/`` and only then
moved in; an existing complete index stays usable until the new one replaces it. The steps of a build
(:func:`_build_locked`) each leave their result on disk: embed shards, stage the FAISS index, passage store and BM25
index, swap them in, write the manifest.

Shapes: N passages, D embedding dimensions, B a batch of passages.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from asymmetry.atomic import atomic_write_json
from asymmetry.cluster import require_ray
from asymmetry.embedder import Embedder, check_backend, embedding_model_name
from asymmetry.errors import AsymmetryError
from asymmetry.index import manifest as mf
from asymmetry.index.chunking import ChunkingConfig, chunk_articles
from asymmetry.index.config import IndexConfig
from asymmetry.index.corpus import Corpus, open_corpus
from asymmetry.index.distributed import embed_shards_ray
from asymmetry.index.faiss_index import choose_index_type, create_index
from asymmetry.index.lexical import LEXICAL_SPEC, bm25_tokenize
from asymmetry.index.prebuilt import embed_with_prebuilt
from asymmetry.index.shards import batched, embed_passages, save_shard, shard_done, shard_paths
from asymmetry.index.store import write_store

log = logging.getLogger(__name__)

DEFAULT_SHARD_SIZE = 4096
TRAIN_SAMPLE = 256 * 1024  # IVF-PQ training vectors (at most)


def build_spec(corpus_desc: dict, model_name: str, chunking: ChunkingConfig, shard_size: int,
               embed_backend: str = "torch") -> dict:
    """What makes two builds the same (kept in ``.build/spec.json`` and the manifest's ``build``). The embedding
    backend is recorded when it is not torch (:func:`asymmetry.index.manifest.embed_backend` reads it), so indexes
    built before backends existed stay up to date."""
    corpus_key = {k: corpus_desc[k] for k in ("source", "reader", "bytes", "sha256")}
    spec = {"format_version": mf.FORMAT_VERSION, "corpus": corpus_key, "embedding_model": model_name,
            "chunking": asdict(chunking), "shard_size": shard_size, "lexical": LEXICAL_SPEC,
            "store": {"minhash": "word-3-gram x64"}}
    if embed_backend != "torch":
        spec["embed_backend"] = embed_backend
    return spec


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
    *,
    embedder: Embedder | None = None,
    ray: bool = False,
    ray_workers: int | None = None,
    embed_backend: str | None = None,
) -> mf.Manifest:
    """Build (or resume, or confirm up to date) the index for ``corpus`` in ``index_dir``; returns its manifest.

    ``embedder`` embeds the passages (default: a new :class:`Embedder` of ``embedding_model``, loaded only if a
    shard needs embedding); when both are given they must name the same model. ``ray``: embed on a Ray cluster
    (``$RAY_ADDRESS``, else a local Ray) with ``ray_workers`` embedders (default: one per GPU, else per CPU); the
    shards and every file are the same as a local build's (:mod:`asymmetry.index.distributed`). ``embed_backend``
    (``torch``, ``onnx``, ``onnx-int8``; default: the embedder's, else torch) runs the passage embedding; it is
    recorded in the manifest, and the index's queries must be embedded with it (``Retriever.open`` checks).
    """
    if ray:
        require_ray()  # before anything is read: without Ray, say how to install it
    embedder = _build_embedder(embedder, embedding_model, embed_backend)
    chunking = chunking or ChunkingConfig()
    root = mf.resolve_index_dir(index_dir)
    root.mkdir(parents=True, exist_ok=True)
    source = open_corpus(corpus)
    spec = build_spec(source.describe(), embedder.name, chunking, shard_size, embedder.backend)
    job = _Job(source, root, spec, embedder, index_type, index_params, batch_size, shard_size, chunking, rebuild,
               progress, ray, ray_workers)
    with _build_lock(root):
        return _build_locked(job)


def ensure_index(config=None, *, embedder: Embedder | None = None, progress: bool = True) -> Path:
    """The folder of the configured index (``config``: a whole ``Config``, an :class:`IndexConfig` or None for the
    default index), built first, with a progress bar, when it holds no complete index. An index that is there is
    returned as it is (``Retriever.open`` checks it)."""
    icfg = _index_config(config)
    root = mf.resolve_index_dir(icfg.index_dir)
    if mf.read_manifest(root) is None:
        log.warning("building the index in %s (first use)", root)
        build_index(icfg.corpus, root, icfg.index_type, icfg.embedding_model, icfg.batch_size, icfg.shard_size,
                    icfg.chunking(), progress=progress, embedder=embedder, embed_backend=icfg.embed_backend)
    return root


def _index_config(config) -> IndexConfig:
    if config is None:
        return IndexConfig()
    if isinstance(config, IndexConfig):
        return config
    if isinstance(getattr(config, "index", None), IndexConfig):  # the whole asymmetry Config
        return config.index
    raise TypeError(f"config must be a Config or IndexConfig, not {type(config).__name__}")


def _build_embedder(embedder: Embedder | None, embedding_model: str | None, backend: str | None) -> Embedder:
    if embedder is None:
        return Embedder(embedding_model, backend=check_backend(backend or "torch"))
    if backend is not None and check_backend(backend) != embedder.backend:
        raise AsymmetryError(
            f"the embedder passed to build_index runs the {embedder.backend!r} backend but embed_backend asks for "
            f"{backend!r}: pass an Embedder(backend={backend!r}) or leave embed_backend unset"
        )
    if embedding_model is not None and embedding_model_name(embedding_model) != embedder.name:
        raise AsymmetryError(
            f"the embedder passed to build_index is {embedder.name!r} but embedding_model asks for "
            f"{embedding_model_name(embedding_model)!r}: pass an Embedder of that model or leave embedding_model unset"
        )
    return embedder


@contextmanager
def _build_lock(root: Path):
    """One build per index folder at a time (another process waits, then finds the index up to date)."""
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


# ------------------------------------------------------------------------------------------------ the build steps
@dataclass
class _Job:
    """One build's inputs."""

    source: Corpus
    root: Path
    spec: dict
    embedder: Embedder
    index_type: str
    index_params: dict | None
    batch_size: int
    shard_size: int
    chunking: ChunkingConfig
    rebuild: bool
    progress: bool
    ray: bool = False
    ray_workers: int | None = None

    @property
    def work(self) -> Path:
        return self.root / mf.WORK_DIR


@dataclass
class _Shards:
    """What step 1 left in the work area: ``count`` shards holding ``passages`` passages of ``articles`` articles."""

    count: int = 0
    passages: int = 0
    articles: int = 0
    reused: int = 0  # passages whose vectors came from the shipped table (index/prebuilt.py)


@dataclass
class _Staged:
    """What step 2 left in ``folder``: the files ``names`` of a ``kind`` index of dimension ``dim``."""

    folder: Path
    kind: str
    params: dict
    dim: int
    names: list[str] = field(default_factory=list)


def _build_locked(job: _Job) -> mf.Manifest:
    """The build, under the folder's lock. Every step leaves its result on disk, so a killed build resumes."""
    existing = _existing_index(job)
    if existing is not None:
        return existing
    _prepare_work_area(job.work, job.spec)
    shards = _embed_shards(job)  # 1. stream, chunk and embed shard by shard (finished shards are skipped)
    staged = _stage_files(job, shards)  # 2. the FAISS index, the passage store and the BM25 index, in .build/
    _swap_in(job.root, staged)  # 3. moved into the folder: the old manifest goes first
    return _write_manifest(job, shards, staged)  # 4. the new manifest last: it marks the index complete


def _existing_index(job: _Job) -> mf.Manifest | None:
    """The folder's complete index when it is this build's (up to date); an error when it is another build's."""
    if job.rebuild:  # a rebuild replaces whatever is there, a damaged manifest included
        return None
    existing = mf.read_manifest(job.root)
    if existing is None:
        return None
    if existing.build == job.spec and job.index_type in ("auto", existing.index_type) and not job.index_params:
        log.info("index in %s is up to date", job.root)
        return existing
    raise AsymmetryError(
        f"{job.root} already holds a complete index ({existing.index_type}, {existing.passage_count} passages of "
        f"{existing.corpus.get('source')}, embedded with {existing.embedding_model} on "
        f"{mf.embed_backend(existing)}) that differs from this "
        "build: pass --rebuild to replace it (it stays usable until the new one is complete) or choose another "
        f"--index-dir; to rebuild the index that is there: {mf.rebuild_command(job.root, existing)}"
    )


def _prepare_work_area(work: Path, spec: dict) -> None:
    """Keep the shards of this build (a resume), discard those of another build of the same corpus (other settings
    or an edited file), refuse to discard those of another corpus, and record the spec."""
    work.mkdir(exist_ok=True)
    for leftover in [*work.glob(".shard-*"), *work.glob(".spec.json-*")]:  # temp files of a killed write
        leftover.unlink(missing_ok=True)
    spec_path = work / mf.SPEC_NAME
    old = mf.read_spec(work.parent) if spec_path.is_file() else None
    shards = sorted(work.glob("shard-*.jsonl"))
    if spec_path.is_file() and old != spec and shards:
        old_source = (old or {}).get("corpus", {}).get("source")
        if old_source is not None and old_source != spec["corpus"]["source"]:
            raise AsymmetryError(
                f"{work} holds {len(shards)} embedding shards of another corpus ({old_source}); this build is of "
                f"{spec['corpus']['source']}. To continue or rebuild that index: {mf.rebuild_command(work.parent)}; "
                "to discard its shards and build "
                f"this corpus there, delete {mf.quote(work)} first, or choose another --index-dir"
            )
        log.warning("discarding embedding shards of a different build in %s", work)
        for f in work.glob("shard-*"):
            f.unlink()
    atomic_write_json(spec_path, spec, indent=2)


def _embed_shards(job: _Job) -> _Shards:
    """Step 1: stream the corpus, chunk it and embed it into ``shard-NNNNN.{npy,jsonl}``, skipping finished shards."""
    if job.ray:
        return _not_empty(job, embed_shards_ray(job, _Shards(), job.ray_workers))
    shards = _Shards()
    resumed = embedded = 0
    started = time.perf_counter()

    def counted_articles():
        for a in job.source:
            shards.articles += 1
            yield a

    bar = tqdm(desc=f"embedding {job.source.source}", unit=" passages", disable=not job.progress, dynamic_ncols=True)
    try:
        for i, chunks in enumerate(batched(chunk_articles(counted_articles(), job.chunking), job.shard_size)):
            shards.count += 1
            shards.passages += len(chunks)
            if shard_done(job.work, i, len(chunks)):
                resumed += 1
                bar.set_postfix_str(f"shard {i}: done earlier, skipped")
                continue
            vectors, reused = embed_with_prebuilt(  # (B, D): the shipped default-corpus vectors where they apply
                [c.indexed_text for c in chunks], job.embedder,
                lambda texts: embed_passages(texts, job.embedder, job.batch_size, bar))
            bar.update(reused)
            embedded += len(chunks) - reused
            shards.reused += reused
            save_shard(job.work, i, chunks, vectors)
            bar.set_postfix_str(f"shard {i} saved")
    finally:
        bar.close()
    _not_empty(job, shards)
    secs = time.perf_counter() - started
    if resumed:
        log.warning("resumed: %d of %d shards were already embedded", resumed, shards.count)
    log.info("embedded %d passages in %.1fs (%.0f passages/s)", embedded, secs, embedded / max(secs, 1e-9))
    if shards.reused:
        log.info("took %d passage vectors from the shipped default-corpus table", shards.reused)
    return shards


def _not_empty(job: _Job, shards: _Shards) -> _Shards:
    if shards.passages == 0:
        raise AsymmetryError(
            f"corpus {job.source.source} yielded no passages ({shards.articles} articles with text): pass a corpus "
            "with non-empty articles (JSONL/Parquet need title and text; dumps need main-namespace pages)"
        )
    return shards


def _stage_files(job: _Job, shards: _Shards) -> _Staged:
    """Step 2: write the index files into ``.build/staged`` (the folder's current index stays usable meanwhile)."""
    folder = job.work / "staged"
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir()
    with _writing(folder / mf.FAISS_NAME):
        kind, params, dim = _write_faiss(job, shards, folder / mf.FAISS_NAME)
    staged = _Staged(folder, kind, params, dim, [mf.FAISS_NAME, mf.STORE_NAME, mf.BM25_DIR])
    if kind == "ivfpq" and params.get("refine"):
        with _writing(folder / mf.VECTORS_NAME):
            _write_vectors(job.work, shards.count, shards.passages, dim, folder / mf.VECTORS_NAME)
        staged.names.append(mf.VECTORS_NAME)
    with _writing(folder / mf.STORE_NAME):
        write_store(folder / mf.STORE_NAME, _shard_rows(job.work, shards.count))
    with _writing(folder / mf.BM25_DIR):
        _build_bm25(job.work, shards.count, folder / mf.BM25_DIR, job.progress)
    return staged


@contextmanager
def _writing(path: Path):
    """Turn a failed write of an index file (FAISS and sqlite report a full disk or a file size limit in their own
    exception types) into one line naming the file, the free space and the fix; the finished shards stay."""
    try:
        yield
    except (RuntimeError, sqlite3.Error, OSError) as exc:
        if isinstance(exc, RuntimeError) and "write" not in str(exc).lower() and "fwrite" not in str(exc):
            raise
        free = shutil.disk_usage(path.parent).free
        raise AsymmetryError(
            f"cannot write {path} ({str(exc).splitlines()[0][:160]}; {free / 1e6:.0f} MB free on its filesystem): "
            "if the disk is full or a file size limit (ulimit -f) is set, free space or raise it and rerun the same "
            "command; the finished embedding shards are kept"
        ) from None


def _write_faiss(job: _Job, shards: _Shards, out: Path) -> tuple[str, dict, int]:
    """The FAISS index over every shard's vectors, written to ``out``; returns (index type, params, D)."""
    import faiss  # heavy: only when an index is assembled

    dim = int(np.load(shard_paths(job.work, 0)[0], mmap_mode="r").shape[1])
    kind = choose_index_type(shards.passages, job.index_type)
    train = _training_sample(job.work, shards.count, shards.passages) if kind == "ivfpq" else None  # (T, D)
    index, params = create_index(kind, dim, shards.passages, job.index_params, train)
    for i in tqdm(range(shards.count), desc=f"adding to {kind} index", unit=" shards", disable=not job.progress):
        index.add(np.ascontiguousarray(np.load(shard_paths(job.work, i)[0]), dtype=np.float32))  # (B, D)
    faiss.write_index(index, str(out))
    return kind, params, dim


def _swap_in(root: Path, staged: _Staged) -> None:
    """Step 3: move the staged files into the folder (renames of finished files). The old manifest goes first, so
    the folder reads as incomplete while files move."""
    (root / mf.MANIFEST_NAME).unlink(missing_ok=True)
    (root / mf.VECTORS_NAME).unlink(missing_ok=True)  # a previous IVF-PQ build's vectors
    for name in staged.names:
        target = root / name
        if target.is_dir():
            shutil.rmtree(target)
        os.replace(staged.folder / name, target)
    staged.folder.rmdir()


def _write_manifest(job: _Job, shards: _Shards, staged: _Staged) -> mf.Manifest:
    """Step 4: the manifest, written last (atomically): its presence marks a complete index."""
    manifest = mf.Manifest(
        format_version=mf.FORMAT_VERSION, embedding_model=job.embedder.name, embedding_dim=staged.dim,
        index_type=staged.kind, index_params=staged.params, passage_count=shards.passages,
        article_count=shards.articles, corpus=job.source.describe(), chunking=asdict(job.chunking),
        lexical=LEXICAL_SPEC, build=job.spec, files=mf.file_entries(job.root, staged.names),
        created=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    mf.write_manifest(job.root, manifest)
    return manifest


def _write_vectors(work: Path, n_shards: int, n: int, dim: int, out: Path) -> None:
    """All passage vectors as one (N, D) float32 .npy, for IVF-PQ's exact re-ranking (memory-mapped at search)."""
    vectors = np.lib.format.open_memmap(out, mode="w+", dtype=np.float32, shape=(n, dim))  # (N, D)
    start = 0
    for i in range(n_shards):
        block = np.load(shard_paths(work, i)[0], mmap_mode="r")  # (B, D)
        vectors[start: start + len(block)] = block
        start += len(block)
    vectors.flush()
    del vectors


def _shard_rows(work: Path, n_shards: int):
    pid = 0
    for i in range(n_shards):
        with open(shard_paths(work, i)[1], encoding="utf-8") as fh:
            for line in fh:
                rec = json.loads(line)
                yield pid, rec["title"], rec["text"], rec["url"], rec["metadata"]
                pid += 1


def _training_sample(work: Path, n_shards: int, n: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    take = min(n, TRAIN_SAMPLE)
    parts = []
    for i in range(n_shards):
        vecs = np.load(shard_paths(work, i)[0], mmap_mode="r")  # (B, D)
        m = max(1, round(take * len(vecs) / n))
        parts.append(np.asarray(vecs[np.sort(rng.choice(len(vecs), size=min(m, len(vecs)), replace=False))]))
    return np.concatenate(parts)  # (T, D)


def _build_bm25(work: Path, n_shards: int, out: Path, progress: bool) -> None:
    import bm25s  # heavy: only when a lexical index is built

    texts = []
    for i in range(n_shards):
        with open(shard_paths(work, i)[1], encoding="utf-8") as fh:
            texts.extend(f"{r['title']}\n{r['text']}" for r in map(json.loads, fh))
    tokens = bm25_tokenize(texts)  # seconds even for 10^5 passages: no third-party bars
    model = bm25s.BM25(method=LEXICAL_SPEC["method"])
    model.index(tokens, show_progress=False)
    model.save(str(out))
