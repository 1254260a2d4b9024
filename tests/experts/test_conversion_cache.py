"""A GGUF's cached config and tokenizer folder is found by content: a copied or moved GGUF (or a home copied elsewhere)
reuses it."""

from __future__ import annotations

import shutil

from asymmetry import defaults
from asymmetry.experts.base import _content_key, gguf_folder, models_dir, resolve_model, user_gguf_dtype


def test_a_copied_gguf_reuses_the_cached_folder(tmp_path):
    _, folder = resolve_model("smollm2")  # written once (or found) in the home
    before = sorted(p.name for p in models_dir().iterdir())
    copy = tmp_path / "elsewhere" / "my-copy.gguf"
    copy.parent.mkdir()
    shutil.copyfile(defaults.smollm_gguf_path(), copy)
    assert gguf_folder(copy) == folder
    assert sorted(p.name for p in models_dir().iterdir()) == before  # nothing converted, nothing written


def test_a_different_gguf_gets_its_own_folder(tmp_path):
    _, folder = resolve_model("smollm2")
    changed = tmp_path / "changed.gguf"
    data = bytearray(defaults.smollm_gguf_path().read_bytes())
    data[-1] ^= 0xFF  # the last byte of the last tensor
    changed.write_bytes(bytes(data))
    assert _content_key(changed) != _content_key(defaults.smollm_gguf_path())
    assert folder.name.endswith(_content_key(defaults.smollm_gguf_path()))


def test_a_large_user_gguf_is_found_by_content():
    """A user's own large GGUF (here the joined 1.5B file of the home, as a user would point at it) reuses the folder
    cached under the built-in name; its float weights (``quantize = "none"``, dtype auto) would be bfloat16."""
    _, builtin = resolve_model("qwen2.5-coder-1.5b")
    joined = models_dir() / "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"
    assert user_gguf_dtype(joined) == "bfloat16" and user_gguf_dtype(defaults.smollm_gguf_path()) == "float32"
    before = sorted(p.name for p in models_dir().iterdir())
    name, folder = resolve_model(str(joined))
    assert folder == builtin and name == joined.stem
    assert sorted(p.name for p in models_dir().iterdir()) == before
