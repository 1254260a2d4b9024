"""[sampler] section of the config: every stage's parameters plus ``stages``, the order of the chain as data.

A stage whose parameters make it a no-op (temperature 1, top_k 0, top_p 1, min_p 0, penalties neutral, CFG scale 1
without a negative prompt, mirostat 0, no grammar) is left out of the chain, so the plain path does no extra work.

Example::

    [sampler]
    temperature = 0.8
    top_p = 0.95
    mirostat = 2
    tau = 4.0
    stages = ["penalties", "cfg", "grammar", "temperature", "top_k", "top_p", "min_p", "mirostat"]
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace

from asymmetry.errors import ConfigError

#: Every stage name that may appear in ``stages``.
STAGE_NAMES = ("penalties", "cfg", "grammar", "temperature", "top_k", "top_p", "min_p", "mirostat")
DEFAULT_STAGES = list(STAGE_NAMES)
MAX_TOP_LOGPROBS = 20  # alternatives per token, as OpenAI's top_logprobs


def _num(where: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(where, value, "expected a finite number")
    return float(value)


def _int(where: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(where, value, "expected an integer")
    return value


@dataclass
class SamplerConfig:
    """Decoding settings. ``temperature = 0`` (or ``greedy = true``) picks the most likely token at every step."""

    max_tokens: int = 256
    temperature: float = 0.7
    seed: int | None = None
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    repeat_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    penalty_last_n: int = 64
    cfg_scale: float = 1.0
    cfg_rescale: float = 0.0
    negative_prompt: str | None = None
    mirostat: int = 0
    tau: float = 5.0
    eta: float = 0.1
    mirostat_m: int = 100
    mirostat_max_heat: float = 4.0
    grammar: str | None = None
    grammar_file: str | None = None
    json_schema: str | None = None
    greedy: bool = False
    stop: list[str] = field(default_factory=list)
    stages: list[str] = field(default_factory=lambda: list(DEFAULT_STAGES))
    logprobs: int | None = None  # report each token's log-probability and this many alternatives (logprobs.py)

    def __post_init__(self) -> None:
        w = "sampler"
        if _int(f"{w}.max_tokens", self.max_tokens) < 1:
            raise ConfigError(f"{w}.max_tokens", self.max_tokens, "use a positive number of tokens, e.g. 256")
        if self.seed is not None and _int(f"{w}.seed", self.seed) < 0:
            raise ConfigError(f"{w}.seed", self.seed, "use a non-negative integer, or omit it for a random seed")
        if _num(f"{w}.temperature", self.temperature) < 0:
            raise ConfigError(f"{w}.temperature", self.temperature, "use 0 (greedy) or a positive temperature")
        if _int(f"{w}.top_k", self.top_k) < 0:
            raise ConfigError(f"{w}.top_k", self.top_k, "use 0 (off) or a positive number of tokens")
        if not 0.0 < _num(f"{w}.top_p", self.top_p) <= 1.0:
            raise ConfigError(f"{w}.top_p", self.top_p, "use a probability in (0, 1]; 1 turns top-p off")
        if not 0.0 <= _num(f"{w}.min_p", self.min_p) < 1.0:
            raise ConfigError(f"{w}.min_p", self.min_p, "use a fraction in [0, 1); 0 turns min-p off")
        if _num(f"{w}.repeat_penalty", self.repeat_penalty) <= 0:
            raise ConfigError(f"{w}.repeat_penalty", self.repeat_penalty, "use a positive factor; 1 turns it off")
        _num(f"{w}.frequency_penalty", self.frequency_penalty)
        _num(f"{w}.presence_penalty", self.presence_penalty)
        if _int(f"{w}.penalty_last_n", self.penalty_last_n) < -1:
            raise ConfigError(f"{w}.penalty_last_n", self.penalty_last_n, "use -1 (whole context), 0 (off) or n > 0")
        _num(f"{w}.cfg_scale", self.cfg_scale)
        if not 0.0 <= _num(f"{w}.cfg_rescale", self.cfg_rescale) <= 1.0:
            raise ConfigError(f"{w}.cfg_rescale", self.cfg_rescale, "use a blend factor in [0, 1]; 0 turns it off")
        if self.negative_prompt is not None and not isinstance(self.negative_prompt, str):
            raise ConfigError(f"{w}.negative_prompt", self.negative_prompt, "use a string, or omit it")
        if self.mirostat not in (0, 1, 2) or isinstance(self.mirostat, bool):
            raise ConfigError(f"{w}.mirostat", self.mirostat, "use 0 (off), 1 (mirostat v1) or 2 (mirostat v2)")
        if _num(f"{w}.tau", self.tau) <= 0:
            raise ConfigError(f"{w}.tau", self.tau, "use a positive target surprise in bits, e.g. 5.0")
        if _num(f"{w}.eta", self.eta) <= 0:
            raise ConfigError(f"{w}.eta", self.eta, "use a positive learning rate, e.g. 0.1")
        if _int(f"{w}.mirostat_m", self.mirostat_m) < 2:
            raise ConfigError(f"{w}.mirostat_m", self.mirostat_m, "use at least 2 tokens, e.g. 100 (llama.cpp)")
        if _num(f"{w}.mirostat_max_heat", self.mirostat_max_heat) < 1:
            raise ConfigError(f"{w}.mirostat_max_heat", self.mirostat_max_heat,
                              "use a factor >= 1, e.g. 4 (how far mirostat may raise the temperature to reach tau); "
                              "1 turns that off")
        constraints = [n for n in ("grammar", "grammar_file", "json_schema") if getattr(self, n) is not None]
        for name in constraints:
            if not isinstance(getattr(self, name), str):
                raise ConfigError(f"{w}.{name}", getattr(self, name), "use a string")
        if len(constraints) > 1:
            raise ConfigError(f"{w}.{constraints[1]}", getattr(self, constraints[1]),
                              f"set only one of grammar, grammar_file, json_schema (also set: {constraints[0]})")
        if not isinstance(self.greedy, bool):
            raise ConfigError(f"{w}.greedy", self.greedy, "use true or false")
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        if not isinstance(self.stop, list) or not all(isinstance(s, str) and s for s in self.stop):
            raise ConfigError(f"{w}.stop", self.stop, "use a list of non-empty strings")
        if not isinstance(self.stages, list) or not all(isinstance(s, str) for s in self.stages):
            raise ConfigError(f"{w}.stages", self.stages, f"use a list of stage names from {list(STAGE_NAMES)}")
        for name in self.stages:
            if name not in STAGE_NAMES:
                raise ConfigError(f"{w}.stages", name, f"unknown stage; valid stages: {', '.join(STAGE_NAMES)}")
        if len(set(self.stages)) != len(self.stages):
            dup = next(s for s in self.stages if self.stages.count(s) > 1)
            raise ConfigError(f"{w}.stages", dup, "list each stage once")
        if self.logprobs is not None and not 0 <= _int(f"{w}.logprobs", self.logprobs) <= MAX_TOP_LOGPROBS:
            raise ConfigError(f"{w}.logprobs", self.logprobs,
                              f"use 0 to {MAX_TOP_LOGPROBS} alternatives per token, or omit it (no log-probabilities)")

    @property
    def is_greedy(self) -> bool:
        return self.greedy or self.temperature == 0

    @property
    def uses_cfg(self) -> bool:
        return "cfg" in self.stages and (self.cfg_scale != 1.0 or self.cfg_rescale > 0)

    def replace(self, **changes) -> SamplerConfig:
        """A copy with ``changes`` applied (validated again)."""
        return replace(self, **changes)

    def steer(self, **changes) -> SamplerConfig:
        """``replace`` for changes that steer a request (per-call overrides, control tokens): a change that turns
        mirostat on over a greedy config (an expert whose default is temperature 0), saying nothing of
        ``temperature`` or ``greedy``, also leaves greedy decoding — temperature 1, the distribution mirostat's
        target is defined on — since a greedy pick would ignore the target it asked for."""
        if changes.get("mirostat") and self.is_greedy and not {"temperature", "greedy"} & changes.keys():
            changes = {**changes, "temperature": 1.0, "greedy": False}
        return replace(self, **changes)

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]
