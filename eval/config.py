"""[eval] section of the config."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class EvalConfig:
    batch_size: int = 8
