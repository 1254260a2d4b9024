"""[sampler] section of the config."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class SamplerConfig:
    max_tokens: int = 256
    temperature: float = 0.7
    seed: int | None = None
