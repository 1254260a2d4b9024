"""[experts] section of the config."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ExpertsConfig:
    default: str = "general"
