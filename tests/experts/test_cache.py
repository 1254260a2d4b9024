"""``asymmetry cache``: lists the model cache by kind and size; ``--prune`` removes only what can be made again."""

from __future__ import annotations

import json
import os
import time

from asymmetry import defaults
from asymmetry.cli import main
from asymmetry.experts.base import convert_gguf, gguf_folder


def test_cache_prune_removes_conversions_and_old_leftovers_only(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ASYMMETRY_HOME", str(tmp_path / "home"))
    gguf = defaults.smollm_gguf_path()
    folder = gguf_folder(gguf, "smollm2")  # config + tokenizer (what every load uses)
    converted = convert_gguf(gguf, "smollm2", dtype="bfloat16")  # a real dequantised safetensors copy
    models = converted.parent
    old_tmp = models / ".smollm2-float32-abc123"  # a conversion killed two hours ago
    old_tmp.mkdir()
    (old_tmp / "model.safetensors").write_bytes(b"\0" * 1000)
    os.utime(old_tmp, (time.time() - 7200, time.time() - 7200))
    new_tmp = models / ".other-write-xyz"  # a write that may be in progress
    new_tmp.write_bytes(b"\0" * 10)
    mine = models / "notes.txt"  # not ours
    mine.write_text("keep me")

    assert main(["cache", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    kinds = {os.path.basename(e["path"]): e["kind"] for e in listing["models"]}
    assert kinds == {folder.name: "gguf-folder", converted.name: "conversion", old_tmp.name: "temporary",
                     new_tmp.name: "temporary", "notes.txt": "other"}
    big = {os.path.basename(e["path"]): e["bytes"] for e in listing["models"]}[converted.name]
    assert big > 200e6  # 135M parameters in bf16

    assert main(["cache", "--prune", "--dry-run"]) == 0
    said = capsys.readouterr().out
    assert "would remove 2 entries" in said and converted.is_dir() and old_tmp.is_dir()

    assert main(["cache", "--prune", "--json"]) == 0
    removed = {os.path.basename(e["path"]) for e in json.loads(capsys.readouterr().out)["removed"]}
    assert removed == {converted.name, old_tmp.name}
    assert not converted.exists() and not old_tmp.exists()
    assert folder.is_dir() and new_tmp.exists() and mine.read_text() == "keep me"
    assert convert_gguf(gguf, "smollm2", dtype="bfloat16") == converted and converted.is_dir()  # made again on demand
