"""[retrieval] section of the config."""

from __future__ import annotations

from dataclasses import dataclass

from asymmetry.errors import ConfigError

MODES = ("dense", "lexical", "hybrid")


@dataclass
class RetrievalConfig:
    k: int = 5
    mode: str = "hybrid"
    context_tokens: int = 1024

    def __post_init__(self):
        if not isinstance(self.k, int) or self.k < 1:
            raise ConfigError("retrieval.k", self.k, "use a positive integer such as 5")
        if self.mode not in MODES:
            raise ConfigError("retrieval.mode", self.mode, f"use one of {', '.join(MODES)}")
