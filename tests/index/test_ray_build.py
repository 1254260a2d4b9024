"""``asymmetry index build --ray`` on a real local Ray cluster: the same shards, files and search results as a local
build, resumable across kills and across modes, and a clear error without Ray."""

from __future__ import annotations

import io
import itertools
import json
import logging
import shutil
import sys

import faiss
import numpy as np
import pytest

from asymmetry.cli import main
from asymmetry.errors import AsymmetryError
from asymmetry.index import build_index
from asymmetry.index.corpus import open_corpus
from asymmetry.index.manifest import WORK_DIR, load_manifest
from asymmetry.index.store import PassageStore
from asymmetry.retrieval import Retriever
from tests.index.test_build import kill_when_written
from tests.index.test_corpus import gensim_dump


def _shard_files(root):
    return sorted(p.name for p in (root / WORK_DIR).glob("shard-*"))


def _assert_same_index(local, remote, embedder, queries):
    """Same passages in the same order, vectors within 1e-5, the same top-10 for every query (dense and hybrid)."""
    ml, mr = load_manifest(local), load_manifest(remote)
    assert (mr.passage_count, mr.article_count, mr.build) == (ml.passage_count, ml.article_count, ml.build)
    assert _shard_files(remote) == _shard_files(local)
    sl, sr = PassageStore(local / "passages.sqlite"), PassageStore(remote / "passages.sqlite")
    assert len(sl) == len(sr) == ml.passage_count
    for a, b in zip(sl.get(range(len(sl))), sr.get(range(len(sr)))):
        assert (a.title, a.text, a.url) == (b.title, b.text, b.url)
    il, ir = faiss.read_index(str(local / "index.faiss")), faiss.read_index(str(remote / "index.faiss"))
    vl, vr = il.reconstruct_n(0, il.ntotal), ir.reconstruct_n(0, ir.ntotal)  # (N, D)
    assert vl.shape == vr.shape and float(np.abs(vl - vr).max()) < 1e-5
    qv = embedder.encode(queries)  # (Q, D)
    _, top_l = il.search(qv, 10)
    _, top_r = ir.search(qv, 10)
    assert (top_l == top_r).all()
    rl, rr = Retriever.open(local, embedder=embedder), Retriever.open(remote, embedder=embedder)
    for q in queries[:20]:  # the hybrid (dense + BM25) top-10 a user gets
        assert [p.id for p in rl.search(q, k=10, rerank=False)] == [p.id for p in rr.search(q, k=10, rerank=False)]


def _queries(n=100):
    """Questions about the default corpus's articles (titles and first sentences of articles after the first 60)."""
    arts = itertools.islice(open_corpus("default"), 60, 60 + n)
    return [f"{a.title}: {a.text.split('. ')[0]}" for a in arts]


def test_ray_build_equals_the_local_build(ray_cluster, small_corpus, small_index, embedder, tmp_path, caplog):
    out = tmp_path / "ray-index"
    with caplog.at_level(logging.INFO, logger="asymmetry"):
        m = build_index(str(small_corpus), out, index_type="flat", shard_size=32, progress=False, embedder=embedder,
                        ray=True, ray_workers=2)
    assert m.passage_count == load_manifest(small_index).passage_count
    assert "on Ray with 2 workers" in caplog.text
    _assert_same_index(small_index, out, embedder, _queries())


@pytest.mark.slow  # embeds the real dump's passages twice (no shipped vectors apply)
def test_ray_build_of_a_dump_finishes_pages_in_the_workers(ray_cluster, embedder, tmp_path):
    """A MediaWiki dump: the driver reads raw pages, the workers clean the wikitext; same index as locally."""
    dump = gensim_dump()
    local, remote = tmp_path / "local", tmp_path / "ray"
    build_index(str(dump), local, index_type="flat", shard_size=16, progress=False, embedder=embedder)
    build_index(str(dump), remote, index_type="flat", shard_size=16, progress=False, embedder=embedder, ray=True)
    assert load_manifest(local).article_count > 1
    _assert_same_index(local, remote, embedder, _queries(30))


def test_a_killed_ray_build_resumes_from_its_finished_shards_in_either_mode(ray_cluster, small_corpus, embedder,
                                                                           tmp_path, caplog):
    """What a kill leaves (finished shards, no manifest, a half-written shard) is finished by the next build, on Ray
    or locally, re-embedding only what is missing."""
    out = tmp_path / "idx"
    build_index(str(small_corpus), out, index_type="flat", shard_size=16, progress=False, embedder=embedder, ray=True)
    reference = {name: (out / WORK_DIR / name).read_bytes() for name in _shard_files(out)}
    n_shards = sum(name.endswith(".jsonl") for name in reference)
    assert n_shards >= 4

    def kill_after(first: int) -> None:  # the state of a build killed while embedding shard ``first``
        (out / "manifest.json").unlink()
        for i in range(first, n_shards):
            for suffix in (".npy", ".jsonl", ".json"):
                (out / WORK_DIR / f"shard-{i:05d}{suffix}").unlink()
        (out / WORK_DIR / f"shard-{first:05d}.npy").write_bytes(b"half")  # a write cut short

    for ray, first in ((True, 2), (False, 1), (True, n_shards - 1)):
        kill_after(first)
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="asymmetry"):
            build_index(str(small_corpus), out, index_type="flat", shard_size=16, progress=False, embedder=embedder,
                        ray=ray)
        assert f"resumed: {first} of {n_shards} shards were already embedded" in caplog.text
        after = {name: (out / WORK_DIR / name).read_bytes() for name in _shard_files(out)}
        assert after.keys() == reference.keys()
        for name, data in after.items():  # passages byte-identical; vectors within 1e-5 (another process's threads)
            if name.endswith(".npy"):
                a, b = np.load(io.BytesIO(data)), np.load(io.BytesIO(reference[name]))
                assert float(np.abs(a - b).max()) < 1e-5
            elif name.endswith(".jsonl"):
                assert data == reference[name], name
        assert load_manifest(out).passage_count == sum(
            json.loads((out / WORK_DIR / f"shard-{i:05d}.json").read_text())["passages"] for i in range(n_shards))


def test_ray_build_without_ray_says_how_to_install_it(monkeypatch, small_corpus, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError, as when the extra is missing
    with pytest.raises(AsymmetryError, match=r"pip install -e '\.\[ray\]'"):
        build_index(str(small_corpus), tmp_path / "idx", ray=True, progress=False)
    assert not (tmp_path / "idx").exists() or not any((tmp_path / "idx").rglob("shard-*"))
    rc = main(["index", "build", "--corpus", str(small_corpus), "--index-dir", str(tmp_path / "cli"), "--ray"])
    err = capsys.readouterr().err
    assert rc != 0 and "pip install -e '.[ray]'" in err and "Traceback" not in err
    shutil.rmtree(tmp_path / "cli", ignore_errors=True)


@pytest.mark.slow  # a real process with its own local Ray, killed; then the rerun on the session's Ray
def test_a_killed_ray_build_process_resumes_on_ray(ray_cluster, small_corpus, embedder, tmp_path, monkeypatch):
    """SIGKILL a real `asymmetry index build --ray` (its driver and its private Ray) once shards are written; the
    rerun on Ray keeps every finished shard (not embedded again) and completes the index."""
    monkeypatch.setenv("ASYMMETRY_PREBUILT_VECTORS", "none")
    root = tmp_path / "idx"
    cmd = [sys.executable, "-m", "asymmetry", "index", "build", "--corpus", str(small_corpus), "--index-dir",
           str(root), "--shard-size", "8", "--no-progress", "--ray", "--ray-workers", "1"]
    kill_when_written(cmd, root / WORK_DIR / "shard-00001.json")
    assert not (root / "manifest.json").exists()
    stamps = {p.name: p.stat().st_mtime_ns for p in (root / WORK_DIR).glob("shard-*.json")}
    assert 2 <= len(stamps) < 9
    m = build_index(str(small_corpus), root, shard_size=8, progress=False, embedder=embedder, ray=True)
    for name, stamp in stamps.items():  # finished shards were not embedded again
        assert (root / WORK_DIR / name).stat().st_mtime_ns == stamp
    assert m.passage_count == load_manifest(root).passage_count == 65
