"""Persisted artefacts other than the index: checksums written with them and verified on load (router file, adapters),
append-only logs repaired before appending, atomic writes that fail for space or permission, strict JSON."""

from __future__ import annotations

import base64
import json
import logging
import math
import os
import shutil
from pathlib import Path

import pytest

from asymmetry.atomic import atomic_write_json, atomic_write_text
from asymmetry.errors import AsymmetryError
from asymmetry.experts.config import adapters_package_dir
from asymmetry.experts.registry import check_adapter
from asymmetry.integrity import (
    FOLDER_SUMS,
    checksum_path,
    read_jsonl_log,
    strict_json,
    verify_checksum,
    verify_folder_checksums,
    write_checksum,
)
from asymmetry.router.model import DEFAULT_ROUTER_FILE, Router

from .conftest import flip_byte, run_cli, truncate

ROOT_NEEDED = pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")


# -- checksums -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("damage", [flip_byte, truncate, lambda p: p.write_bytes(p.read_bytes() + b" ")])
def test_a_sidecar_checksum_catches_any_change(tmp_path, damage):
    f = tmp_path / "artefact.bin"
    f.write_bytes(os.urandom(4096))
    write_checksum(f)
    verify_checksum(f, "make it again")
    damage(f)
    with pytest.raises(AsymmetryError, match=f"{f} is damaged .*: rebuild it with make it again"):
        verify_checksum(f, "make it again")
    checksum_path(f).unlink()
    verify_checksum(f, "x")  # an artefact from before checksums is read (only logged) ...
    with pytest.raises(AsymmetryError, match="has no checksum"):
        verify_checksum(f, "x", required=True)  # ... unless the caller requires one


def _flip_router_weight(path: Path) -> None:
    """Flip bits of one weight as a disk would: the file stays valid JSON and valid base64 of the same shape."""
    data = json.loads(path.read_text())
    raw = bytearray(base64.b64decode(data["layers"][0]["weight"]["data"]))
    raw[len(raw) // 2 + 3] ^= 0x7F  # the high byte of a float32: a huge or tiny weight
    data["layers"][0]["weight"]["data"] = base64.b64encode(bytes(raw)).decode("ascii")
    path.write_text(json.dumps(data, indent=1) + "\n")


def test_committed_router_and_adapters_carry_checksums():
    verify_checksum(DEFAULT_ROUTER_FILE, "x", required=True)
    for name in ("science", "commonsense", "scholar", "grounded", "grounded-qwen", "grounded-qwen-retrieved"):
        assert verify_folder_checksums(adapters_package_dir() / name, "x")


def test_a_router_with_flipped_weight_bits_is_refused(tmp_path, capsys):
    path = tmp_path / "router.json"
    shutil.copy(DEFAULT_ROUTER_FILE, path)
    shutil.copy(checksum_path(DEFAULT_ROUTER_FILE), checksum_path(path))
    Router.load(path)
    _flip_router_weight(path)
    with pytest.raises(AsymmetryError, match=f"router file {path} is damaged.*asymmetry router train --out {path}"):
        Router.load(path)
    toml = tmp_path / "c.toml"
    toml.write_text(f'[router]\npath = "{path}"\n')
    code, out, err = run_cli(["--config", str(toml), "route", "What is photosynthesis?"], capsys)
    assert code == 2 and err.count("\n") == 1 and "is damaged" in err and not out


def test_a_damaged_committed_router_points_at_retraining(tmp_path, monkeypatch):
    from asymmetry.router import model as router_model

    fake = tmp_path / "default_router.json"
    shutil.copy(DEFAULT_ROUTER_FILE, fake)
    shutil.copy(checksum_path(DEFAULT_ROUTER_FILE), checksum_path(fake))
    truncate(fake, 0.9)
    monkeypatch.setattr(router_model, "DEFAULT_ROUTER_FILE", fake)
    with pytest.raises(AsymmetryError, match="asymmetry router train \\(it writes a router into ASYMMETRY_HOME"):
        Router.load(fake)


def test_a_saved_router_writes_its_checksum(tmp_path):
    router = Router.load(DEFAULT_ROUTER_FILE)
    out = router.save(tmp_path / "r.json")
    assert checksum_path(out).read_text().split() == [checksum_path(out).read_text().split()[0], "r.json"]
    verify_checksum(out, "x", required=True)


@pytest.mark.parametrize("damage", ["truncate-weights", "flip-weights", "edit-card", "drop-weights"])
def test_a_damaged_adapter_is_refused_before_any_model_loads(damage, tmp_path):
    folder = tmp_path / "science"
    shutil.copytree(adapters_package_dir() / "science", folder)
    weights = folder / "adapter_model.safetensors"
    if damage == "truncate-weights":
        truncate(weights)
    elif damage == "flip-weights":
        flip_byte(weights)
    elif damage == "edit-card":
        card = json.loads((folder / "asymmetry_card.json").read_text())
        (folder / "asymmetry_card.json").write_text(json.dumps({**card, "base_model": "other"}))
    else:
        weights.unlink()
    with pytest.raises(AsymmetryError, match="adapter of expert 'science'.*asymmetry expert train-defaults science"):
        check_adapter("science", folder, "qwen2.5-coder-1.5b")


def test_a_truncated_adapter_without_checksums_is_still_a_clear_error(tmp_path):
    folder = tmp_path / "mine"
    shutil.copytree(adapters_package_dir() / "science", folder)
    (folder / FOLDER_SUMS).unlink()
    truncate(folder / "adapter_model.safetensors")
    with pytest.raises(AsymmetryError, match="is damaged or truncated.*asymmetry expert train mine"):
        check_adapter("mine", folder, "qwen2.5-coder-1.5b")
    shutil.copy(adapters_package_dir() / "science" / "adapter_model.safetensors", folder)
    (folder / "adapter_config.json").write_bytes(b"\xff\xfe{")
    with pytest.raises(AsymmetryError, match="adapter_config.json is damaged"):
        check_adapter("mine", folder, "qwen2.5-coder-1.5b")


# -- append-only logs ---------------------------------------------------------------------------------------------------
def _valid(rec) -> bool:
    return isinstance(rec, dict) and isinstance(rec.get("id"), str)


def _damaged(n: int) -> Exception:
    return AsymmetryError(f"line {n} damaged")


@pytest.mark.parametrize("cut", [1, 5, 12, 20])  # the last line is 21 characters
def test_a_half_written_last_line_is_cut_before_the_next_append(tmp_path, cut, caplog):
    log = tmp_path / "predictions.jsonl"
    lines = [json.dumps({"id": str(i), "v": i * 1.5}) for i in range(3)]
    log.write_text(lines[0] + "\n" + lines[1] + "\n" + lines[2][:cut])
    with caplog.at_level(logging.WARNING):
        assert [r["id"] for r in read_jsonl_log(log, _valid, _damaged)] == ["0", "1"]
    assert "line (3) is half-written" in caplog.text
    assert log.read_text() == lines[0] + "\n" + lines[1] + "\n"
    with open(log, "a", encoding="utf-8") as fh:  # what a resumed run does next
        fh.write(lines[2] + "\n")
    assert [r["id"] for r in read_jsonl_log(log, _valid, _damaged)] == ["0", "1", "2"]  # and every later resume
    assert not list(tmp_path.glob(".predictions*"))  # the repair was atomic: no temp file left


def test_a_damaged_line_in_the_middle_is_an_error_not_a_repair(tmp_path):
    log = tmp_path / "p.jsonl"
    log.write_bytes(b'{"id": "a"}\n\xff\xfe garbage\n{"id": "b"}\n')
    with pytest.raises(AsymmetryError, match="line 2 damaged"):
        read_jsonl_log(log, _valid, _damaged)
    assert log.read_bytes().startswith(b'{"id": "a"}\n\xff')  # left as it was for the user to inspect


# -- writes: strict JSON, read-only folders --------------------------------------------------------------------------
def test_reports_are_strict_json(tmp_path):
    with pytest.raises(ValueError):
        atomic_write_json(tmp_path / "r.json", {"map@3": math.nan})
    atomic_write_json(tmp_path / "r.json", strict_json({"map@3": math.nan, "x": [math.inf, 1.0], "n": 3}))
    assert json.loads((tmp_path / "r.json").read_text()) == {"map@3": None, "x": [None, 1.0], "n": 3}


@ROOT_NEEDED
def test_a_read_only_folder_is_a_clear_error(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(AsymmetryError, match=f"cannot write {folder / 'a.txt'}: .*not writable"):
            atomic_write_text(folder / "a.txt", "x")
    finally:
        folder.chmod(0o755)


@ROOT_NEEDED
def test_a_read_only_home_is_announced_and_still_read(tmp_path, monkeypatch, capsys):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("ASYMMETRY_HOME", str(home))
    home.chmod(0o555)
    try:
        code, out, err = run_cli(["expert", "list"], capsys)
    finally:
        home.chmod(0o755)
    assert code == 0 and "ASYMMETRY_HOME" in err and "read-only" in err and "science" in out


def test_a_read_only_filesystem_is_a_clear_error_even_for_root(tmp_path, monkeypatch):
    """Root ignores file modes, so the test suite's root runs simulate the read-only mount's EROFS."""
    import errno
    import tempfile

    def refuse(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", kwargs.get("dir"))

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    with pytest.raises(AsymmetryError, match=f"cannot write {tmp_path / 'a.txt'}: Read-only file system"):
        atomic_write_text(tmp_path / "a.txt", "x")


def test_a_read_only_home_is_announced_before_any_work(monkeypatch, capsys):
    from asymmetry import defaults

    monkeypatch.setattr(defaults, "home_is_writable", lambda: False)
    code, out, err = run_cli(["expert", "list"], capsys)
    assert code == 0 and err.startswith("warning: ASYMMETRY_HOME") and "read-only" in err and "science" in out


def test_eval_qa_resume_names_the_changed_questions(tmp_path):
    from asymmetry.datasets import QAItem
    from asymmetry.eval.qa import PREDICTIONS, RUN_FILE, open_out

    out = tmp_path / "run"
    out.mkdir()
    (out / RUN_FILE).write_text(json.dumps({"input_sha256": "old"}))
    logged = [{"id": "q1", "question": "Who wrote Hamlet?", "answers": ["Shakespeare"]},
              {"id": "q2", "question": "Capital of France?", "answers": ["Paris"]}]
    (out / PREDICTIONS).write_text("".join(json.dumps(r) + "\n" for r in logged))
    items = [QAItem("q1", "Who wrote Hamlet?", ("Shakespeare",), "f"), QAItem("q2", "Capital of France?", ("Lyon",), "f")]
    with pytest.raises(AsymmetryError, match="the input changed since that run began .*; changed questions: q2: "):
        open_out(out, {"input_sha256": "new"}, resume=True, overwrite=False, items=items)


def test_a_damaged_embedding_cache_is_rebuilt_not_used(tmp_path, embedder, caplog):
    from asymmetry.router.data import EmbeddingCache, Example

    examples = [Example("1", "What is a cell?", "science", "t"), Example("2", "Who wrote Hamlet?", "scholar", "t")]
    cache = EmbeddingCache(root=tmp_path, embedder=embedder)
    first = cache.vectors(examples, progress=False)  # (N, D)
    files = list(tmp_path.glob("*.npz"))
    assert files and all(checksum_path(f).is_file() for f in files)
    flip_byte(files[0], offset=len(files[0].read_bytes()) - 30)  # inside a stored vector (npz is uncompressed)
    with caplog.at_level(logging.WARNING):
        again = EmbeddingCache(root=tmp_path, embedder=embedder).vectors(examples, progress=False)
    assert "is damaged (it does not match its checksum): it will be rebuilt" in caplog.text
    assert (again == first).all()


def test_a_damaged_training_checkpoint_is_refused_by_resume(tmp_path):
    import torch

    from asymmetry.experts.training import _restore_checkpoint

    ckpt = tmp_path / "a.checkpoint" / "state.pt"
    ckpt.parent.mkdir()
    torch.save({"step": 3, "base": "b", "total": 9, "n_examples": 4}, ckpt)
    write_checksum(ckpt)
    flip_byte(ckpt)
    with pytest.raises(AsymmetryError, match="training checkpoint .* is damaged.*delete .*a.checkpoint and train again"):
        _restore_checkpoint(None, ckpt)  # refused before the run is touched
    checksum_path(ckpt).unlink()
    ckpt.write_bytes(b"not a checkpoint")  # one from before checksums, cut or overwritten
    with pytest.raises(AsymmetryError, match="training checkpoint .* is damaged"):
        _restore_checkpoint(None, ckpt)


def test_a_damaged_converted_model_is_converted_again(tmp_path, monkeypatch, caplog):
    from asymmetry import integrity
    from asymmetry.experts.base import _is_intact_conversion
    from asymmetry.integrity import folder_quick_check, write_folder_checksums

    folder = tmp_path / "smollm2-135m-instruct-0123456789"  # a stand-in: a safetensors file and a config
    folder.mkdir()
    shutil.copy(adapters_package_dir() / "science" / "adapter_model.safetensors", folder / "model.safetensors")
    (folder / "config.json").write_text("{}")
    write_folder_checksums(folder)
    assert folder_quick_check(folder) is None and _is_intact_conversion(folder)
    monkeypatch.setattr(integrity, "LARGE_FILE", 1024)  # the weights count as large: sizes and header only
    assert folder_quick_check(folder) is None
    truncate(folder / "model.safetensors", 0.99)
    assert folder_quick_check(folder) == "model.safetensors is truncated or padded"
    with caplog.at_level(logging.WARNING):
        assert not _is_intact_conversion(folder)
    assert f"converted model {folder} is damaged" in caplog.text and "converting it again" in caplog.text
    (folder / "config.json").write_text('{"x": 1}')
    assert folder_quick_check(folder) == "config.json does not match its checksum"
