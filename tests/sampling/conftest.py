"""Fixtures for the sampler tests: one Generator over the session's SmolLM2."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def gen(smollm):
    from asymmetry.sampling import Generator

    return Generator(smollm.model, smollm.tokenizer)
