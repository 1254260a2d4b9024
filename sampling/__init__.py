"""Our sampler: a decoding loop with a KV cache where CFG, mirostat, grammar constraints and penalties stack.

``Generator(model, tokenizer).generate(prompt, SamplerConfig(...))`` returns a :class:`Generation`;
``stream(...)`` yields text deltas. ``ControlsConfig`` is the control-token vocabulary (``[controls]``). Heavy imports (torch) happen when these names are first used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from asymmetry.sampling.config import DEFAULT_STAGES, STAGE_NAMES, SamplerConfig
from asymmetry.sampling.controls import ControlsConfig, add_control_tokens

if TYPE_CHECKING:
    from asymmetry.sampling.generator import Branch, Generation, Generator

__all__ = ["DEFAULT_STAGES", "STAGE_NAMES", "Branch", "ControlsConfig", "Generation", "Generator", "SamplerConfig",
           "add_control_tokens"]


def __getattr__(name: str):
    if name in ("Branch", "Generation", "Generator"):
        from asymmetry.sampling import generator

        return getattr(generator, name)
    raise AttributeError(f"module 'asymmetry.sampling' has no attribute {name!r}")
