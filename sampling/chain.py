"""The stage chain of one request: built from a :class:`SamplerConfig` (``config.stages`` is the order, each name has a
factory) into a :class:`Chain` object that the decode loop drives without knowing any stage by name.

A factory returns ``None`` when its parameters make the stage a no-op, so the plain path runs only what it needs.
Names are registered once; a duplicate registration fails at import.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from asymmetry.sampling.config import STAGE_NAMES, SamplerConfig
from asymmetry.sampling.grammar import GrammarMask
from asymmetry.sampling.stages import CFG, BranchCombiner, Greedy, MinP, Mirostat, Penalties, Temperature, TopK, TopP

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
    return Mirostat(c.mirostat, c.tau, c.eta, c.mirostat_m, vocab_size=ctx.vocab_size, max_heat=c.mirostat_max_heat)


assert set(STAGE_FACTORIES) == set(STAGE_NAMES), "every configurable stage needs a factory"


class Chain:
    """The stages of one request as one object: ``apply`` runs them in order, ``accept`` feeds the chosen token to
    the stateful ones, ``reset`` starts over, ``finished`` says a grammar completed, ``stats`` reports what they did.
    Combiner stages (CFG, mixture) get their branch rows through :meth:`set_branch_scores`."""

    def __init__(self, stages: list):
        self.stages = list(stages)
        self._prefix: list = []  # prepended combiners, kept when the chain is rebuilt
        self._index()

    def _index(self) -> None:
        """Which stages are stateful, the grammar, mirostat and the combiners (looked up once, by type)."""
        self._stateful = [s for s in self.stages if hasattr(s, "accept")]
        self._grammar = next((s for s in self.stages if isinstance(s, GrammarMask)), None)
        self._mirostat = next((s for s in self.stages if isinstance(s, Mirostat)), None)
        self._combiners = [s for s in self.stages if isinstance(s, BranchCombiner)]

    def __len__(self) -> int:
        return len(self.stages)

    def __iter__(self):
        return iter(self.stages)

    @property
    def names(self) -> list[str]:
        return [getattr(s, "name", type(s).__name__) for s in self.stages]

    def prepend(self, stage) -> None:
        """Run ``stage`` first (a request's combiner, e.g. a mixture of adapters)."""
        self.stages.insert(0, stage)
        self._prefix.insert(0, stage)
        self._index()

    def rebuild(self, config: SamplerConfig, ctx: ChainContext) -> None:
        """Replace the stages by those of ``config`` from the next token on (a control token changed the request's
        parameters). Prepended combiners and the grammar (``ctx.grammar_stage``) keep their state; a new mirostat
        starts at ``mu = 2 * tau``."""
        self.stages = self._prefix + build_chain(config, ctx).stages
        self._index()

    @property
    def mirostat(self) -> Mirostat | None:
        return self._mirostat

    def observed(self, sampled: float | None) -> float | None:
        """The surprise of the token just accepted: mirostat's (under its truncated distribution) when it ran,
        else ``sampled`` (under the final distribution)."""
        m = self._mirostat
        return m.surprises[-1] if m is not None and m.surprises else sampled

    @property
    def combiners(self) -> list[BranchCombiner]:
        return list(self._combiners)

    def set_branch_scores(self, rows_of: dict[BranchCombiner, torch.Tensor]) -> None:
        for combiner, scores in rows_of.items():
            combiner.set_branch_scores(scores)  # (R, V)

    def apply(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """(1, T) ids so far and (1, V) scores -> (1, V) scores after every stage."""
        for stage in self.stages:
            scores = stage(input_ids, scores)
        return scores

    def accept(self, token: int) -> None:
        for stage in self._stateful:
            stage.accept(token)

    def reset(self) -> None:
        for stage in self.stages:
            if hasattr(stage, "reset"):
                stage.reset()

    @property
    def finished(self) -> bool:
        """A grammar stage reached the end of its language: nothing more may be generated."""
        return self._grammar is not None and self._grammar.terminated

    def stats(self, surprises: list[float]) -> dict[str, Any]:
        """What the stages did: their names, the surprises of the generated tokens (mirostat's where it ran),
        mirostat's final mu and heat, whether a grammar completed."""
        return {
            "stages": self.names,
            "surprise_bits": surprises,
            "mean_surprise_bits": (sum(surprises) / len(surprises)) if surprises else None,
            "final_mu": self._mirostat.mu if self._mirostat is not None else None,
            **(self._mirostat_stats() if self._mirostat is not None else {}),
            "grammar_completed": self._grammar.completed if self._grammar is not None else None,
        }

    def _mirostat_stats(self) -> dict[str, Any]:
        m = self._mirostat
        return {"final_heat": m.heat, "saturated_steps": m.saturated_steps, "tau_out_of_reach": m.out_of_reach()}


def build_chain(config: SamplerConfig, ctx: ChainContext) -> Chain:
    """The stages of ``config.stages`` that are active, in order; greedy decoding ends with :class:`Greedy`."""
    chain = [stage for name in config.stages if (stage := STAGE_FACTORIES[name](config, ctx)) is not None]
    if config.is_greedy:
        chain.append(Greedy())
    return Chain(chain)
