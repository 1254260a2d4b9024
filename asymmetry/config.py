"""The one typed config for the whole assistant, read from TOML.

Each section is a dataclass validated in ``__post_init__``. The sections of the subpackages are owned by them
(``index/config.py``, ``retrieval/config.py``, ...); this module composes them and holds the sections of the two
clients above the engine, ``[assistant]`` and ``[eval]`` (the layers let this module import down, never up). An unknown key or a wrong type is reported with
the section, the key and the fix.

Example ``asymmetry.toml``::

    [assistant]
    context_tokens = 2048

    [index]
    index_type = "auto"

    [retrieval]
    k = 5
    mode = "hybrid"
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from asymmetry.errors import AsymmetryError, ConfigError
from asymmetry.experts.config import ExpertsConfig
from asymmetry.index.config import IndexConfig
from asymmetry.integrity import finite_number, positive_int, read_utf8
from asymmetry.retrieval.config import RetrievalConfig
from asymmetry.router.config import RouterConfig
from asymmetry.sampling.config import SamplerConfig
from asymmetry.sampling.controls import ControlsConfig


@dataclass
class AssistantConfig:
    """[assistant]: the pipeline around the parts."""

    context_tokens: int = 2048  # whole prompt + answer budget, in tokens of the expert's tokenizer
    mixture: bool = False  # blend the router's top two experts when they are close
    mixture_margin: float = 0.15  # "close": top-1 minus top-2 probability at most this
    attribute: bool = True  # a reply that cites no passage gets [n] for the passages that hold what it says

    def __post_init__(self):
        positive_int("assistant.context_tokens", self.context_tokens, "use an integer >= 256, e.g. 2048", minimum=256)
        for name in ("mixture", "attribute"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"assistant.{name}", getattr(self, name), "use true or false")
        self.mixture_margin = finite_number("assistant.mixture_margin", self.mixture_margin,
                                            "use a probability gap in [0, 1]", minimum=0.0, maximum=1.0)


NORMALIZATIONS = ("none", "token", "char")
RETRIEVAL_QUERIES = ("question", "question+options")
PROMPT_STYLES = ("auto", "plain", "chat")


@dataclass
class EvalConfig:
    """[eval]: the multiple-choice benchmark runner (``asymmetry eval mc``) and free-form QA (``asymmetry eval qa``).

    ``qa_sampler``: sampler fields every ``eval qa`` request sets over ``[sampler]`` and the expert's own defaults
    (the command's sampler flags override these in turn). By default only a 64-token cap on the reply, so a run
    measures the decoding a user gets (the built-in experts decode greedily) and stays affordable.
    """

    batch_size: int = 8
    normalize: str = "none"
    cfg_scale: float = 1.0
    unconditional_prefix: str = "Answer:"
    prompt_style: str = "auto"  # plain: the templates below; chat: the expert's chat template (its training format);
    # auto: chat for an expert with a LoRA adapter (scored in the format it was trained in), plain for a bare base
    prompt_template: str = "Question: {question}\nAnswer:"
    context_template: str = "{context}\n\n"
    option_template: str = " {option}"
    expert: str = "auto"
    retrieval: bool = True
    k: int = 3
    context_tokens: int = 384
    retrieval_query: str = "question"
    top: int = 3
    qa_sampler: dict[str, Any] = field(default_factory=lambda: {"max_tokens": 64})

    def __post_init__(self):
        for name in ("batch_size", "k", "context_tokens", "top"):
            positive_int(f"eval.{name}", getattr(self, name))
        if self.normalize not in NORMALIZATIONS:
            raise ConfigError("eval.normalize", self.normalize, f"use one of {', '.join(NORMALIZATIONS)}")
        self.cfg_scale = finite_number("eval.cfg_scale", self.cfg_scale, "use a non-negative number; 1.0 turns CFG off",
                                       minimum=0.0)
        if "{question}" not in self.prompt_template:
            raise ConfigError("eval.prompt_template", self.prompt_template, "include the {question} placeholder")
        if "{context}" not in self.context_template:
            raise ConfigError("eval.context_template", self.context_template, "include the {context} placeholder")
        if "{option}" not in self.option_template:
            raise ConfigError("eval.option_template", self.option_template, "include the {option} placeholder")
        if not isinstance(self.unconditional_prefix, str) or not self.unconditional_prefix:
            raise ConfigError("eval.unconditional_prefix", self.unconditional_prefix,
                              'use the end of the prompt template, e.g. "Answer:"')
        if not isinstance(self.expert, str) or not self.expert:
            raise ConfigError("eval.expert", self.expert, 'use "auto", "base" or an expert name')
        if not isinstance(self.retrieval, bool):
            raise ConfigError("eval.retrieval", self.retrieval, "use true or false")
        if self.prompt_style not in PROMPT_STYLES:
            raise ConfigError("eval.prompt_style", self.prompt_style, f"use one of {', '.join(PROMPT_STYLES)}")
        if self.retrieval_query not in RETRIEVAL_QUERIES:
            raise ConfigError("eval.retrieval_query", self.retrieval_query, f"use one of {', '.join(RETRIEVAL_QUERIES)}")
        self._check_qa_sampler()

    def _check_qa_sampler(self) -> None:
        check_sampler_table("eval.qa_sampler", self.qa_sampler)


def check_sampler_table(where: str, table: object) -> None:
    """A table of sampler fields set over ``[sampler]`` (``[eval] qa_sampler``, an expert's ``sampler``): known
    fields only, each valid as :class:`SamplerConfig` validates it (finite numbers, ranges)."""
    names = SamplerConfig.field_names()
    if not isinstance(table, dict):
        raise ConfigError(where, table, "use a table of sampler fields, e.g. { temperature = 0.0, max_tokens = 64 }")
    unknown = sorted(set(table) - set(names))
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]}", table[unknown[0]],
                          f"unknown sampler field; valid fields: {', '.join(names)}")
    try:
        SamplerConfig(**table)
    except ConfigError as exc:
        raise ConfigError(f"{where}.{exc.field.removeprefix('sampler.')}", exc.value, exc.fix) from None


@dataclass
class Config:
    assistant: AssistantConfig = field(default_factory=AssistantConfig)
    index: IndexConfig = field(default_factory=IndexConfig)
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    controls: ControlsConfig = field(default_factory=ControlsConfig)
    experts: ExpertsConfig = field(default_factory=ExpertsConfig)
    router: RouterConfig = field(default_factory=RouterConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self):
        if isinstance(self.experts, ExpertsConfig):  # each expert's sampler table, validated like [sampler]
            for spec in self.experts.specs():
                check_sampler_table(f"experts.experts[{spec.name!r}].sampler", spec.sampler)

    @classmethod
    def load(cls, path: str | os.PathLike | None = None) -> Config:
        """Read a TOML file; ``None`` uses ``$ASYMMETRY_CONFIG`` if set, else the built-in defaults."""
        path = path or os.environ.get("ASYMMETRY_CONFIG")
        if not path:
            return cls()
        path = Path(path)
        if not path.is_file():
            raise AsymmetryError(f"config file {path} does not exist: pass an existing TOML file or omit --config")
        try:
            data = tomllib.loads(read_utf8(path, "config file"))
        except tomllib.TOMLDecodeError as exc:
            raise AsymmetryError(f"config file {path} is not valid TOML ({exc}): fix the syntax at that position")
        return cls.from_dict(data, source=str(path))

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> Config:
        return from_dict(cls, data, source)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def override(section: Any, flags: dict[str, Any]) -> Any:
    """A copy of the config ``section`` with the command-line ``flags`` that were given (not None) applied, validated
    by the section's own ``__post_init__``: a flag accepts exactly what the TOML key accepts. An error names the flag
    and the key."""
    given = {k: v for k, v in flags.items() if v is not None}
    try:
        return dataclasses.replace(section, **given)
    except ConfigError as exc:
        key = exc.field.rsplit(".", 1)[-1]
        if key in given:
            raise ConfigError(f"--{key.replace('_', '-')} ({exc.field})", exc.value, exc.fix) from None
        raise


def from_dict(cls: type, data: dict[str, Any], where: str) -> Any:
    """Build dataclass ``cls`` from a (TOML) dict, recursing into dataclass-typed fields; unknown keys are errors."""
    if not isinstance(data, dict):
        raise ConfigError(where, data, f"expected a table of keys for {cls.__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]}", data[unknown[0]], f"unknown key; valid keys: {', '.join(sorted(names))}")
    kwargs = {}
    for key, value in data.items():
        hint = hints.get(key)
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, (dict, hint)):
                raise ConfigError(f"{where}.{key}", value, f"use a table of {hint.__name__} keys")
            if isinstance(value, dict):
                value = from_dict(hint, value, f"{where}.{key}")
        else:
            _check_scalar(f"{where}.{key}", value, hint)
        kwargs[key] = value
    return cls(**kwargs)


SCALARS = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}


def _check_scalar(where: str, value: Any, hint: Any) -> None:
    """A key whose type is a scalar (``str``, ``int``, ``float``, ``bool``, or one of them or None) gets a value of
    that type (an integer where a number is expected; never a bool for a number); other types are left to the
    section's own validation (a list field may also take one string, ...)."""
    options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    if not all(o in SCALARS or o is type(None) for o in options):
        return
    for option in options:
        if option is type(None) and value is None:
            return
        if option is bool and isinstance(value, bool):
            return
        if option in (int, float) and isinstance(value, int) and not isinstance(value, bool):
            return
        if option is float and isinstance(value, float) or option is str and isinstance(value, (str, os.PathLike)):
            return  # a path object where a path string is expected is fine from Python
    wanted = " or ".join(SCALARS[o] for o in options if o in SCALARS) + (" (or leave it unset)" if type(None) in
                                                                         options else "")
    raise ConfigError(where, value, f"use {wanted}")
