"""Experts: base models loaded once and shared, LoRA adapters switched per request, the registry, LoRA training.

    from asymmetry.experts import ExpertRegistry, Expert
    registry = ExpertRegistry.from_config(cfg.experts)
    model, tokenizer = registry.model_for("science")  # science's adapter active on the shared SmolLM2
"""

from __future__ import annotations

from asymmetry.experts.base import LoadedBase, load_base
from asymmetry.experts.config import BUILTIN_EXPERTS, ExpertsConfig, ExpertSpec
from asymmetry.experts.registry import Expert, ExpertRegistry

__all__ = ["BUILTIN_EXPERTS", "Expert", "ExpertRegistry", "ExpertSpec", "ExpertsConfig", "LoadedBase", "load_base"]
