"""Damaged index builds: embedding shards, the manifest, index files, a full disk. Each ends in a correct index or a
one-line error whose printed fix works as printed, never in a silently wrong index."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from asymmetry.index.build import build_index
from asymmetry.index.manifest import load_manifest, read_manifest
from asymmetry.integrity import sha256_file

from .conftest import fix_from, flip_byte, run_cli, truncate


def _build(corpus: Path, root: Path, embedder, **kw):
    return build_index(str(corpus), root, index_type="flat", shard_size=2, progress=False, embedder=embedder, **kw)


@pytest.fixture(scope="module")
def reference(tiny_corpus, tmp_path_factory, embedder):
    """The intact index of the tiny corpus: its files' checksums are what every repaired build must reproduce."""
    root = tmp_path_factory.mktemp("reference")
    m = _build(tiny_corpus, root, embedder)
    assert m.passage_count > 4
    return {rel: e["sha256"] for rel, e in m.files.items() if rel.endswith((".faiss", ".sqlite"))}


def _same_index(root: Path, reference: dict) -> bool:
    return all(sha256_file(root / rel) == sha for rel, sha in reference.items())


@pytest.mark.parametrize("damage", ["flip-vectors", "cut-passages", "flip-passages", "drop-record", "swap-vectors"])
def test_a_damaged_shard_is_re_embedded_with_a_warning(damage, tiny_corpus, tmp_path, embedder, reference, caplog):
    root = tmp_path / "idx"
    _build(tiny_corpus, root, embedder)
    work = root / ".build"
    npy, jsonl = work / "shard-00001.npy", work / "shard-00001.jsonl"
    if damage == "flip-vectors":
        flip_byte(npy, offset=len(npy.read_bytes()) - 7)  # inside a float: still a valid .npy of the right shape
    elif damage == "cut-passages":
        jsonl.write_text(jsonl.read_text().splitlines()[0] + "\n")
    elif damage == "flip-passages":
        flip_byte(jsonl)
    elif damage == "drop-record":
        (work / "shard-00001.json").unlink()
    else:  # vectors of another shard under this name: right shape, wrong rows
        npy.write_bytes((work / "shard-00002.npy").read_bytes())
    with caplog.at_level(logging.INFO, logger="asymmetry.index"):
        m = _build(tiny_corpus, root, embedder, rebuild=True)
    if damage == "drop-record":
        assert "shard-00001 has no record" in caplog.text
    else:
        assert f"embedding shard {work / 'shard-00001'} is damaged" in caplog.text and "re-embedding it" in caplog.text
    assert "resumed:" in caplog.text  # the intact shards were reused
    assert _same_index(root, reference), "the rebuilt index differs from an intact build"
    assert load_manifest(root, verify=True).passage_count == m.passage_count


def test_search_scores_stay_finite_after_a_repaired_shard(tiny_corpus, tmp_path, embedder):
    import faiss

    root = tmp_path / "idx"
    _build(tiny_corpus, root, embedder)
    flip_byte(root / ".build" / "shard-00000.npy", offset=200)
    _build(tiny_corpus, root, embedder, rebuild=True)
    index = faiss.read_index(str(root / "index.faiss"))
    vectors = index.reconstruct_n(0, index.ntotal)  # (N, D)
    assert np.isfinite(vectors).all() and np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-3)


def test_damaged_manifest_fix_works_as_printed(tiny_corpus, tmp_path, embedder, capsys):
    root = tmp_path / "custom"
    _build(tiny_corpus, root, embedder)
    shards = sorted(p.name for p in (root / ".build").glob("shard-*"))
    (root / "manifest.json").write_text('{"format_version": 1, "embedding_')  # cut mid-write
    code, _, err = run_cli(["index", "info", "--index-dir", str(root)], capsys)
    assert code == 2 and err.count("\n") == 1 and "manifest.json is damaged" in err
    fix = fix_from(err)
    assert fix[fix.index("--corpus") + 1] == str(tiny_corpus.resolve()) and "--rebuild" in fix
    code, _, err = run_cli([*fix, "--no-progress"], capsys)
    assert code == 0, err
    assert sorted(p.name for p in (root / ".build").glob("shard-*")) == shards  # reused, not discarded
    assert run_cli(["index", "info", "--index-dir", str(root), "--verify"], capsys)[0] == 0


def test_damaged_index_file_fix_names_the_corpus_and_works(tiny_corpus, tmp_path, embedder, capsys):
    root = tmp_path / "custom"
    _build(tiny_corpus, root, embedder)
    flip_byte(root / "index.faiss")
    code, _, err = run_cli(["index", "info", "--index-dir", str(root), "--verify"], capsys)
    assert code == 2 and "index.faiss does not match its checksum" in err
    fix = fix_from(err)
    assert fix[fix.index("--corpus") + 1] == str(tiny_corpus.resolve())
    assert run_cli([*fix, "--no-progress"], capsys)[0] == 0
    assert run_cli(["index", "info", "--index-dir", str(root), "--verify"], capsys)[0] == 0


def test_a_custom_builds_shards_are_never_discarded(tiny_corpus, tmp_path, embedder, capsys):
    root = tmp_path / "custom"
    _build(tiny_corpus, root, embedder)
    (root / "manifest.json").unlink()  # an interrupted custom build
    before = {p.name: p.stat().st_mtime_ns for p in (root / ".build").glob("shard-*")}
    code, _, err = run_cli(["index", "build", "--index-dir", str(root), "--rebuild", "--no-progress"], capsys)
    assert code == 2 and "shards of another corpus" in err and str(tiny_corpus) in err
    assert {p.name: p.stat().st_mtime_ns for p in (root / ".build").glob("shard-*")} == before
    code, out, _ = run_cli(["index", "info", "--index-dir", str(root)], capsys)
    assert code == 1 and f"--corpus {tiny_corpus.resolve()} --shard-size 2" in out  # the hint resumes this build


@pytest.mark.parametrize("flag", [["--shard-size", "0"], ["--shard-size", "-5"], ["--batch-size", "0"],
                                  ["--index-type", "flat", "--batch-size", "-1"]])
def test_build_flags_are_validated_like_the_toml_keys(flag, tiny_corpus, tmp_path, capsys):
    code, _, err = run_cli(["index", "build", "--corpus", str(tiny_corpus), "--index-dir", str(tmp_path / "i"),
                            *flag], capsys)
    name = next(f for f in flag if f.startswith("--") and f != "--index-type")
    assert code == 2 and f"invalid {name} (index.{name[2:].replace('-', '_')})" in err and "positive integer" in err
    assert not (tmp_path / "i").exists()
    toml = tmp_path / "c.toml"
    toml.write_text(f"[index]\n{name[2:].replace('-', '_')} = {flag[-1]}\n")
    code, _, err = run_cli(["--config", str(toml), "index", "info"], capsys)
    assert code == 2 and f"index.{name[2:].replace('-', '_')}" in err


def test_non_utf8_jsonl_corpus_is_a_clear_error(tmp_path, capsys):
    corpus = tmp_path / "latin1.jsonl"
    corpus.write_bytes(json.dumps({"title": "Caf\u00e9", "text": "x " * 50}, ensure_ascii=False).encode("latin-1"))
    code, _, err = run_cli(["index", "build", "--corpus", str(corpus), "--index-dir", str(tmp_path / "i"),
                            "--no-progress"], capsys)
    assert code == 2 and "line 1 is not UTF-8 (invalid byte 0xe9)" in err and "iconv" in err


FULL_DISK = """
import resource, sys
resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))
from asymmetry.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_full_disk_during_a_build_names_the_file_and_keeps_the_shards(tiny_corpus, tmp_path, monkeypatch, capsys,
                                                                        caplog):
    """``ulimit -f`` stands in for a full disk: the shards (a few KB each) fit, the FAISS index does not."""
    root = tmp_path / "idx"
    monkeypatch.setenv("ASYMMETRY_HOME", str(tmp_path / "home"))
    argv = ["index", "build", "--corpus", str(tiny_corpus), "--index-dir", str(root), "--index-type", "flat",
            "--shard-size", "2", "--no-progress"]
    proc = subprocess.run([sys.executable, "-c", FULL_DISK.format(limit=6000), *argv], check=False,
                          capture_output=True, text=True, env=dict(os.environ), timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: cannot write ") and "index.faiss" in last and "MB free" in last, last
    assert "Traceback" not in proc.stderr
    shards = list((root / ".build").glob("shard-*.npy"))
    assert len(shards) >= 3 and read_manifest(root) is None
    with caplog.at_level(logging.WARNING, logger="asymmetry.index"):
        code, _, err = run_cli(argv, capsys)  # the same command once space is freed: it resumes from the shards
    assert code == 0, err
    assert f"resumed: {len(shards)} of" in caplog.text
    assert load_manifest(root, verify=True).passage_count > 0


def test_a_damaged_passage_store_names_the_fix(tiny_corpus, tmp_path, embedder):
    from asymmetry.errors import AsymmetryError
    from asymmetry.index.store import PassageStore

    root = tmp_path / "idx"
    _build(tiny_corpus, root, embedder)
    truncate(root / "passages.sqlite", 0.3)
    with pytest.raises(AsymmetryError, match=f"malformed.*--corpus {tiny_corpus.resolve()} .*--rebuild"):
        PassageStore(root / "passages.sqlite").get([0])
