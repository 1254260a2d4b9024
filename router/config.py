"""[router] section of the config."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class RouterConfig:
    threshold: float = 0.5
    fallback: str = "general"
