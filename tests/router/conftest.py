"""Router fixtures: a small, deterministic subsample of the shipped question sets and their (cached) embeddings.

The subsample is a prefix of the full training selection in hash order, so its embeddings come from the cache that
``asymmetry router train`` fills in ``<ASYMMETRY_HOME>/router/embeddings``; in a fresh home they are embedded once.
"""

from __future__ import annotations

import pytest

from asymmetry.experts import ExpertRegistry
from asymmetry.router.data import PARTS, EmbeddingCache, builtin_examples
from asymmetry.router.model import RouterTrainSettings, train

SMALL_CAPS = {"train": 20, "calibration": 10, "heldout": 10}


@pytest.fixture(scope="session")
def default_experts():
    """The default expert names from the real experts registry (the router checks its labels against them)."""
    names = ExpertRegistry.from_config().names()
    assert {"science", "commonsense", "scholar", "general"} <= set(names)
    return names


@pytest.fixture(scope="session")
def small_examples():
    return builtin_examples(caps=SMALL_CAPS)


@pytest.fixture(scope="session")
def small_vectors(small_examples, embedder):
    cache = EmbeddingCache(embedder=embedder)
    return {part: cache.vectors(small_examples[part], progress=False) for part in PARTS}


@pytest.fixture(scope="session")
def small_router(small_examples, small_vectors):
    """A logistic router trained on the small subsample (not saved)."""
    return train(
        small_vectors["train"], [e.label for e in small_examples["train"]],
        small_vectors["calibration"], [e.label for e in small_examples["calibration"]],
        settings=RouterTrainSettings(head="logistic", epochs=40),
    )
