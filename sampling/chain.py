"""Build the stage chain from a :class:`SamplerConfig`: ``config.stages`` is the order, each name has a factory.

A factory returns ``None`` when its parameters make the stage a no-op, so the plain path runs only what it needs.
Names are registered once; a duplicate registration fails at import.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from asymmetry.sampling.config import STAGE_NAMES, SamplerConfig
from asymmetry.sampling.stages import CFG, Greedy, MinP, Mirostat, Penalties, Temperature, TopK, TopP

STAGE_FACTORIES: dict[str, Callable[[SamplerConfig, ChainContext], Any]] = {}


@dataclass
class ChainContext:
    """What factories may need beyond the config: the vocabulary width, and the grammar stage if one is compiled."""

    vocab_size: int
    cfg_active: bool = False
    grammar_stage: Any = None


def register_stage(name: str):
    """Register the factory for stage ``name``; names must be unique identifiers."""

    def deco(factory: Callable[[SamplerConfig, ChainContext], Any]):
        if not name.isidentifier():
            raise ValueError(f"stage name {name!r} must be an identifier")
        if name in STAGE_FACTORIES:
            raise ValueError(f"stage {name!r} is already registered")
        STAGE_FACTORIES[name] = factory
        return factory

    return deco


@register_stage("penalties")
def _penalties(c: SamplerConfig, ctx: ChainContext):
    if c.penalty_last_n == 0 or (c.repeat_penalty == 1.0 and not c.frequency_penalty and not c.presence_penalty):
        return None
    return Penalties(c.repeat_penalty, c.frequency_penalty, c.presence_penalty, c.penalty_last_n)


@register_stage("cfg")
def _cfg(c: SamplerConfig, ctx: ChainContext):
    return CFG(c.cfg_scale, c.cfg_rescale) if ctx.cfg_active else None


@register_stage("grammar")
def _grammar(c: SamplerConfig, ctx: ChainContext):
    return ctx.grammar_stage


@register_stage("temperature")
def _temperature(c: SamplerConfig, ctx: ChainContext):
    return None if c.is_greedy or c.temperature == 1.0 else Temperature(c.temperature)


@register_stage("top_k")
def _top_k(c: SamplerConfig, ctx: ChainContext):
    return TopK(c.top_k) if c.top_k > 0 and not c.is_greedy else None


@register_stage("top_p")
def _top_p(c: SamplerConfig, ctx: ChainContext):
    return TopP(c.top_p) if c.top_p < 1.0 and not c.is_greedy else None


@register_stage("min_p")
def _min_p(c: SamplerConfig, ctx: ChainContext):
    return MinP(c.min_p) if c.min_p > 0 and not c.is_greedy else None


@register_stage("mirostat")
def _mirostat(c: SamplerConfig, ctx: ChainContext):
    if c.mirostat == 0 or c.is_greedy:
        return None
    return Mirostat(c.mirostat, c.tau, c.eta, c.mirostat_m, vocab_size=ctx.vocab_size)


assert set(STAGE_FACTORIES) == set(STAGE_NAMES), "every configurable stage needs a factory"


def build_chain(config: SamplerConfig, ctx: ChainContext) -> list:
    """The stages of ``config.stages`` that are active, in order; greedy decoding ends with :class:`Greedy`."""
    chain = [stage for name in config.stages if (stage := STAGE_FACTORIES[name](config, ctx)) is not None]
    if config.is_greedy:
        chain.append(Greedy())
    return chain
