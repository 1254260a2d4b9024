from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import faiss
import numpy as np
import pytest

from asymmetry.cli import main
from asymmetry.config import Config
from asymmetry.embedder import Embedder, embedding_model_path
from asymmetry.errors import AsymmetryError
from asymmetry.index import IndexConfig, build_index, ensure_index
from asymmetry.index.chunking import chunk_articles
from asymmetry.index.corpus import open_corpus
from asymmetry.index.faiss_index import choose_index_type, create_index
from asymmetry.index.manifest import load_manifest, read_manifest
from asymmetry.index.store import PassageStore
from asymmetry.retrieval import RetrievalConfig, Retriever


def test_small_index_manifest_store_and_vectors_agree(small_index, small_corpus, embedder):
    m = load_manifest(small_index)
    chunks = list(chunk_articles(open_corpus(small_corpus)))
    assert m.passage_count == len(chunks) > m.article_count == 63
    assert m.embedding_model == "all-MiniLM-L6-v2" and m.embedding_dim == 384
    assert m.index_type == "flat" and m.format_version == 1
    assert m.corpus["reader"] == "jsonl" and len(m.corpus["sha256"]) == 64
    assert {"index.faiss", "passages.sqlite", "bm25/vocab.index.json"} <= set(m.files)
    store = PassageStore(small_index / "passages.sqlite")
    assert len(store) == len(chunks)
    index = faiss.read_index(str(small_index / "index.faiss"))
    assert index.ntotal == len(chunks)
    for pid in (0, 17, len(chunks) - 1):  # FAISS id i <-> store id i <-> i-th chunk, embedded with its title
        (p,) = store.get([pid])
        assert (p.title, p.text) == (chunks[pid].title, chunks[pid].text)
        vec = embedder.encode([chunks[pid].indexed_text])[0]  # (D,)
        np.testing.assert_allclose(index.reconstruct(pid), vec, atol=2e-3)


def test_same_build_is_up_to_date_and_a_different_one_needs_rebuild(small_index, small_corpus):
    before = (small_index / "manifest.json").read_text()
    m = build_index(str(small_corpus), small_index, index_type="flat", shard_size=32, progress=False)
    assert (small_index / "manifest.json").read_text() == before and m.index_type == "flat"
    with pytest.raises(AsymmetryError, match="already holds a complete index.*--rebuild"):
        build_index(str(small_corpus), small_index, index_type="hnsw", shard_size=32, progress=False)
    assert (small_index / "manifest.json").read_text() == before  # nothing lost
    load_manifest(small_index)


def _copy_shards(src, dst):
    dst.mkdir(parents=True)
    shutil.copytree(src / ".build", dst / ".build")


def test_rebuild_as_hnsw_and_ivfpq_reuses_embedded_shards(small_index, small_corpus, tmp_path, caplog):
    for kind in ("hnsw", "ivfpq"):
        root = tmp_path / kind
        _copy_shards(small_index, root)
        stamps = {p.name: p.stat().st_mtime_ns for p in (root / ".build").glob("shard-*")}
        with caplog.at_level("WARNING"):
            m = build_index(str(small_corpus), root, index_type=kind, shard_size=32, progress=False)
        assert "resumed" in caplog.text
        assert {p.name: p.stat().st_mtime_ns for p in (root / ".build").glob("shard-*")} == stamps
        assert m.index_type == kind and m.passage_count == load_manifest(small_index).passage_count
        index = faiss.read_index(str(root / "index.faiss"))
        q = faiss.read_index(str(small_index / "index.faiss")).reconstruct(5).reshape(1, -1)
        _, ids = index.search(q, 3)
        assert 5 in ids[0]


def test_empty_corpus_is_an_error_and_leaves_no_index(tmp_path):
    corpus = tmp_path / "empty.jsonl"
    corpus.write_text("\n\n")
    with pytest.raises(AsymmetryError, match="yielded no passages"):
        build_index(str(corpus), tmp_path / "idx", progress=False)
    assert read_manifest(tmp_path / "idx") is None


def kill_when_written(cmd: list[str], marker) -> None:
    """Run ``cmd`` (a build) in its own process group and SIGKILL the group once ``marker`` (a second shard's
    record) exists; the process must not end by itself before."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not marker.exists():
            assert proc.poll() is None, proc.stdout.read().decode()
            assert time.monotonic() < deadline, "the build never finished a second shard"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_killed_build_resumes_from_last_finished_shard(small_corpus, tmp_path, monkeypatch):
    """Kill a real `asymmetry index build` process mid-way; the rerun continues and the result is complete. (The
    shipped default-corpus vectors are off: this is about embedding work that resumes.)"""
    monkeypatch.setenv("ASYMMETRY_PREBUILT_VECTORS", "none")
    root = tmp_path / "idx"
    cmd = [sys.executable, "-m", "asymmetry", "index", "build", "--corpus", str(small_corpus), "--index-dir",
           str(root), "--shard-size", "8", "--no-progress"]
    kill_when_written(cmd, root / ".build" / "shard-00001.json")  # the record, written last, marks a finished shard
    assert read_manifest(root) is None  # a half-built index is never complete
    finished = sorted(p.stem for p in (root / ".build").glob("shard-*.json"))
    assert 2 <= len(finished) < 9
    assert main(["index", "info", "--index-dir", str(root)]) == 1
    # the kill may land in the middle of a later shard's write: only shards with a record count as finished
    stamps = {p.name: p.stat().st_mtime_ns for stem in finished for p in (root / ".build").glob(f"{stem}.*")}
    assert len(stamps) == 3 * len(finished)
    m = build_index(str(small_corpus), root, shard_size=8, progress=False)
    for name, stamp in stamps.items():  # finished shards were not embedded again
        assert (root / ".build" / name).stat().st_mtime_ns == stamp
    assert m.passage_count == len(list(chunk_articles(open_corpus(small_corpus))))
    assert load_manifest(root).passage_count == m.passage_count


class _FailingEmbedder(Embedder):
    """Embeds ``shards`` shards, then fails like a killed process would (in-process, so the test is fast)."""

    def __init__(self, shards: int):
        super().__init__()
        self.left = shards

    def encode(self, texts, batch_size=64, show_progress=False):
        if self.left == 0:
            raise KeyboardInterrupt
        self.left -= 1
        return super().encode(texts, batch_size, show_progress)


def test_interrupted_build_resumes_with_a_shared_embedder(small_corpus, tmp_path, embedder, monkeypatch):
    monkeypatch.setenv("ASYMMETRY_PREBUILT_VECTORS", "none")  # counts embedding calls: no shipped vectors
    root = tmp_path / "idx"
    with pytest.raises(KeyboardInterrupt):
        build_index(str(small_corpus), root, shard_size=16, progress=False, embedder=_FailingEmbedder(2))
    assert read_manifest(root) is None
    finished = sorted(p.name for p in (root / ".build").glob("shard-*"))
    assert finished == ["shard-00000.json", "shard-00000.jsonl", "shard-00000.npy",
                        "shard-00001.json", "shard-00001.jsonl", "shard-00001.npy"]
    assert not list((root / ".build").glob(".*"))  # no temp file left by the interrupted write
    stamps = {p.name: p.stat().st_mtime_ns for p in (root / ".build").glob("shard-*")}
    m = build_index(str(small_corpus), root, shard_size=16, progress=False, embedder=embedder)
    assert {p.name: p.stat().st_mtime_ns for p in (root / ".build").glob("shard-*") if p.name in stamps} == stamps
    assert m.passage_count == len(list(chunk_articles(open_corpus(small_corpus)))) > 2 * 16
    assert m.embedding_model == embedder.name and load_manifest(root).files


def test_index_info_cli(small_index, capsys):
    assert main(["index", "info", "--index-dir", str(small_index), "--verify"]) == 0
    out = capsys.readouterr().out
    assert "flat" in out and "all-MiniLM-L6-v2" in out and "checksums verified" in out
    assert main(["index", "info", "--index-dir", str(small_index), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["passage_count"] == load_manifest(small_index).passage_count


def test_cli_errors_are_one_line(tmp_path, capsys):
    (tmp_path / "c.jsonl").write_text('{"title": "A"}\n')
    assert main(["index", "build", "--corpus", str(tmp_path / "c.jsonl"), "--index-dir", str(tmp_path / "i")]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]  # after the (empty) progress bar
    assert last.startswith("error: ") and "c.jsonl line 1 has no 'text' field" in last


def test_auto_index_type_by_size():
    assert [choose_index_type(n) for n in (10_000, 200_000, 5_000_000)] == ["flat", "hnsw", "ivfpq"]
    assert choose_index_type(10, "ivfpq") == "ivfpq"
    with pytest.raises(AsymmetryError, match="unknown index type"):
        choose_index_type(10, "lsh")
    with pytest.raises(AsymmetryError, match="training vectors"):
        create_index("ivfpq", 384, 5000)


def test_ivfpq_reranks_candidates_exactly_from_memory_mapped_vectors(small_index, small_corpus, tmp_path):
    root = tmp_path / "ivfpq"
    _copy_shards(small_index, root)
    m = build_index(str(small_corpus), root, index_type="ivfpq", shard_size=32, progress=False)
    assert m.index_params["refine"] > 0 and "vectors.npy" in m.files
    flat = Retriever.open(small_index)
    assert Retriever.open(root).refine == m.index_params["refine"]
    # A tiny corpus gets very coarse PQ codes, so let every passage be a candidate: the test is that re-ranking
    # orders candidates by the exact score (every IVF list is probed: nprobe >= nlist here).
    assert m.index_params["nprobe"] >= m.index_params["nlist"]
    exact = Retriever.open(root, config=RetrievalConfig(refine=m.passage_count))
    pq_only = Retriever.open(root, config=RetrievalConfig(refine=0))
    assert exact.refine == m.passage_count and pq_only.vectors is None
    queries = faiss.read_index(str(small_index / "index.faiss")).reconstruct_n(0, 12)  # (12, D)
    differs = 0
    for q in queries:
        want = flat.dense_ids(q, 5)
        got = exact.dense_ids(q, 5)
        assert [i for i, _ in got] == [i for i, _ in want]
        assert [s for _, s in got] == pytest.approx([s for _, s in want], abs=1e-5)
        differs += [s for _, s in pq_only.dense_ids(q, 5)] != pytest.approx([s for _, s in want], abs=1e-5)
    assert differs > 0  # the PQ scores alone are approximate: re-ranking is what makes them exact
    (root / "vectors.npy").unlink()
    with pytest.raises(AsymmetryError, match="vectors.npy"):
        Retriever.open(root, config=RetrievalConfig(verify_checksums=False))


def test_ensure_index_builds_only_a_missing_index(small_index, small_corpus, tmp_path, embedder):
    before = (small_index / "manifest.json").stat().st_mtime_ns
    assert ensure_index(IndexConfig(index_dir=str(small_index)), embedder=embedder, progress=False) == small_index
    assert (small_index / "manifest.json").stat().st_mtime_ns == before  # there already: returned as it is
    rows = small_corpus.read_text(encoding="utf-8").splitlines()[:3]
    corpus = tmp_path / "three.jsonl"
    corpus.write_text("\n".join(rows) + "\n", encoding="utf-8")
    cfg = Config.from_dict({"index": {"index_dir": str(tmp_path / "idx"), "corpus": str(corpus), "shard_size": 2}})
    with pytest.raises(AsymmetryError, match=r"no complete index.*asymmetry index build.*ensure_index"):
        Retriever.open(config=cfg)  # opening never builds
    assert read_manifest(tmp_path / "idx") is None
    root = ensure_index(cfg, embedder=embedder, progress=False)
    m = load_manifest(root)
    assert root == tmp_path / "idx" and m.article_count == 3 and m.build["shard_size"] == 2
    assert Retriever.open(config=cfg, embedder=embedder).search("a", k=1, mode="dense")
    with pytest.raises(TypeError, match="Config or IndexConfig"):
        ensure_index(RetrievalConfig())


def test_an_embedder_of_another_model_is_refused(small_index, small_corpus, tmp_path, embedder):
    other = tmp_path / "my-minilm"
    shutil.copytree(embedding_model_path(), other)  # a user's own local model folder
    with pytest.raises(AsymmetryError, match="embedder passed to build_index.*embedding_model"):
        build_index(str(small_corpus), tmp_path / "idx", embedding_model=str(other), embedder=embedder)
    with pytest.raises(AsymmetryError, match="built with the embedding model 'all-MiniLM-L6-v2'.*embedder passed"):
        Retriever.open(small_index, embedder=Embedder(str(other)))
