"""Experts: base models (local folder or GGUF, dtype, device_map, quantization), the model pool that loads each base
once per placement and attaches every adapter once, the expert registry, LoRA training.

    from asymmetry.experts import ExpertRegistry, ModelPool
    registry = ExpertRegistry.from_config(cfg.experts, pool=ModelPool())
    science = registry.model("science")      # ExpertModel: the shared SmolLM2 + science's adapter, chosen per row
    science.forward_kwargs(rows=2)           # {"adapter_names": ["science", "science"]}
"""

from __future__ import annotations

from asymmetry.experts.base import DEFAULT_BASE, LARGE_BASE, LoadedBase, Placement, load_model, resolve_model
from asymmetry.experts.config import BUILTIN_EXPERTS, ExpertsConfig, ExpertSpec
from asymmetry.experts.pool import BASE_ROW, ExpertModel, ModelPool, PooledBase
from asymmetry.experts.registry import Expert, ExpertRegistry

__all__ = ["BASE_ROW", "BUILTIN_EXPERTS", "DEFAULT_BASE", "LARGE_BASE", "Expert", "ExpertModel", "ExpertRegistry", "ExpertSpec", "ExpertsConfig",
           "LoadedBase", "ModelPool", "Placement", "PooledBase", "load_model", "resolve_model"]
