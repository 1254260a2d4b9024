"""Shared fixtures. Tests run offline on the embedded defaults; models are converted once into ASYMMETRY_HOME."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def smollm():
    """The embedded default base model (SmolLM2-135M-Instruct, fp32), loaded once for the whole session."""
    from asymmetry.experts.base import load_base

    return load_base()


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
