"""Control tokens that steer the sampler: ``[controls]`` in the config.

A control is one added special token (``<|recall|>``) that sets sampler fields for the text that follows it: when
it appears in the prompt or is generated, the request's stage parameters change from the next token on (mirostat's
target with ``mu`` back at ``2 * tau``, temperature, CFG scale, the CFG negative rubric). Control tokens are part of
the model's context but never of the text. The vocabulary is data:

- built-in controls (``recall``, ``explain``, ``formal``, ``plain``), each a table of sampler overrides;
- ``tau=X`` for every X of ``tau_values`` (a hand-written perplexity target);
- ``neg=NAME`` for every rubric of ``rubrics`` plus ``neg=none`` (a hand-written CFG negative rubric).

Example::

    [controls]
    disabled = ["plain"]
    [controls.rubrics]
    pirate = "Talk like a pirate."
    [controls.vocabulary.cite]
    mirostat = 2
    tau = 1.0
    cfg_scale = 1.0
    description = "quoting a source word for word"
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from typing import Any

from asymmetry.errors import ConfigError
from asymmetry.sampling.config import SamplerConfig

#: Sampler fields a control may set.
OVERRIDE_FIELDS = ("mirostat", "tau", "eta", "temperature", "greedy", "top_k", "top_p", "min_p", "cfg_scale",
                   "cfg_rescale", "repeat_penalty")
NAME = re.compile(r"[a-z][a-z0-9_]*")
NO_RUBRIC = "none"

BUILTIN_RUBRICS = {
    "formal": "Write formally: long, precise sentences in an academic register, without contractions.",
    "plain": "Write plainly and casually: short sentences in simple everyday words, like talking to a friend.",
}

BUILTIN_CONTROLS: dict[str, dict[str, Any]] = {
    "recall": {"mirostat": 2, "tau": 1.5, "cfg_scale": 1.0,
               "description": "copying facts from the retrieved passages: a low surprise target, no CFG"},
    "explain": {"mirostat": 2, "tau": 4.0, "description": "the model's own prose: a moderate surprise target"},
    "formal": {"cfg_scale": 1.5, "negative": "plain",
               "description": "formal tone: CFG pushes away from the plain rubric"},
    "plain": {"cfg_scale": 1.5, "negative": "formal",
              "description": "plain tone: CFG pushes away from the formal rubric"},
}


@dataclass
class Control:
    """One control: its name, the sampler fields it sets, the CFG negative rubric it switches to (a rubric name,
    ``none`` to drop guidance's rubric, or unset to keep the current one), and what it is for."""

    name: str
    sampler: dict[str, Any] = field(default_factory=dict)
    negative: str | None = None
    description: str = ""
    token: str = ""

    def apply(self, config: SamplerConfig) -> SamplerConfig:
        """``config`` with this control's sampler fields set (validated again; a control that sets mirostat over a
        greedy expert leaves greedy decoding, see :meth:`SamplerConfig.steer`)."""
        return config.steer(**self.sampler) if self.sampler else config

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "token": self.token, "sampler": dict(self.sampler), "negative": self.negative,
                "description": self.description}


def _control(where: str, name: str, table: object, rubrics: dict[str, str], token_format: str) -> Control:
    if not isinstance(table, dict):
        raise ConfigError(where, table, "use a table of sampler fields (e.g. tau = 2.0), negative and description")
    table = dict(table)
    negative = table.pop("negative", None)
    description = table.pop("description", "")
    unknown = sorted(set(table) - set(OVERRIDE_FIELDS))
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]}", table[unknown[0]],
                          f"a control may set only {', '.join(OVERRIDE_FIELDS)}, negative and description")
    try:
        SamplerConfig().replace(**table)
    except ConfigError as exc:
        raise ConfigError(f"{where}.{exc.field.removeprefix('sampler.')}", exc.value, exc.fix) from None
    if negative is not None and negative != NO_RUBRIC and negative not in rubrics:
        raise ConfigError(f"{where}.negative", negative,
                          f"unknown rubric; use {NO_RUBRIC!r} or one of [controls.rubrics]: {', '.join(rubrics)}")
    if not isinstance(description, str):
        raise ConfigError(f"{where}.description", description, "use a string")
    return Control(name, table, negative, description, token_format.format(name=name))


@dataclass
class ControlsConfig:
    """[controls]: the control vocabulary (see the module docstring).

    ``generate``: which models may emit control tokens. ``"auto"`` (the default): only experts whose adapter was
    trained with the vocabulary (their card's ``controls``, experts/controls.py); every other model has them masked
    out of the logits, so a base sees them only in prompts and samples exactly as before. ``true``: every model;
    ``false``: none (an expert trained with them decodes as a plain one: the fixed-sampler baselines).
    """

    enabled: bool = True
    generate: bool | str = "auto"
    token_format: str = "<|{name}|>"
    tau_values: list[float] = field(default_factory=lambda: [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0])
    neg_cfg_scale: float = 1.5
    rubrics: dict[str, str] = field(default_factory=dict)  # name -> negative prompt; merged over the built-ins
    vocabulary: dict[str, Any] = field(default_factory=dict)  # name -> table; merged over the built-ins
    disabled: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        w = "controls"
        if not isinstance(self.enabled, bool):
            raise ConfigError(f"{w}.enabled", self.enabled, "use true or false")
        if self.generate not in (True, False, "auto") or isinstance(self.generate, int) and not isinstance(
                self.generate, bool):
            raise ConfigError(f"{w}.generate", self.generate,
                              'use "auto" (experts trained with control tokens emit them), true or false')
        if not isinstance(self.token_format, str) or "{name}" not in self.token_format:
            raise ConfigError(f"{w}.token_format", self.token_format, "use a string holding {name}, e.g. <|{name}|>")
        if not isinstance(self.tau_values, list) or not all(
                isinstance(t, (int, float)) and not isinstance(t, bool) and t > 0 for t in self.tau_values):
            raise ConfigError(f"{w}.tau_values", self.tau_values, "use a list of positive targets in bits")
        if isinstance(self.neg_cfg_scale, bool) or not isinstance(self.neg_cfg_scale, (int, float)):
            raise ConfigError(f"{w}.neg_cfg_scale", self.neg_cfg_scale, "use a guidance scale, e.g. 1.5")
        if not isinstance(self.rubrics, dict):
            raise ConfigError(f"{w}.rubrics", self.rubrics, "use a table of rubric name = negative prompt text")
        for name, text in self.rubrics.items():
            if not NAME.fullmatch(name) or name == NO_RUBRIC:
                raise ConfigError(f"{w}.rubrics.{name}", text, "use a lowercase identifier other than 'none'")
            if not isinstance(text, str) or not text.strip():
                raise ConfigError(f"{w}.rubrics.{name}", text, "use a non-empty negative prompt text")
        if not isinstance(self.vocabulary, dict):
            raise ConfigError(f"{w}.vocabulary", self.vocabulary, "use a table of control name = table of fields")
        for name in self.vocabulary:
            if not NAME.fullmatch(name):
                raise ConfigError(f"{w}.vocabulary.{name}", self.vocabulary[name],
                                  "use a lowercase identifier (letters, digits, _) as the control's name")
        if not isinstance(self.disabled, list) or not all(isinstance(n, str) for n in self.disabled):
            raise ConfigError(f"{w}.disabled", self.disabled, "use a list of control names")
        self.all_rubrics = {**BUILTIN_RUBRICS, **self.rubrics}
        self._controls = self._build()
        for name in self.disabled:
            if name not in self._controls:
                raise ConfigError(f"{w}.disabled", name,
                                  f"unknown control; known controls: {', '.join(self._all_names())}")
        for name in self.disabled:
            del self._controls[name]

    def _all_names(self) -> list[str]:
        return list(self._controls)

    def _build(self) -> dict[str, Control]:
        tables: dict[str, Any] = {**BUILTIN_CONTROLS, **self.vocabulary}
        for tau in self.tau_values:
            tables[f"tau={tau:g}"] = {"mirostat": 2, "tau": float(tau),
                                      "description": f"hand-written perplexity target: {tau:g} bits"}
        for rubric in self.all_rubrics:
            tables[f"neg={rubric}"] = {"cfg_scale": float(self.neg_cfg_scale), "negative": rubric,
                                       "description": f"hand-written CFG negative rubric: {rubric}"}
        tables[f"neg={NO_RUBRIC}"] = {"cfg_scale": 1.0, "negative": NO_RUBRIC,
                                      "description": "hand-written: no CFG negative rubric (guidance off)"}
        return {name: _control(f"controls.vocabulary.{name}", name, table, self.all_rubrics, self.token_format)
                for name, table in tables.items()}

    @property
    def controls(self) -> list[Control]:
        """Every active control (empty when ``enabled`` is false)."""
        return list(self._controls.values()) if self.enabled else []

    @property
    def tokens(self) -> list[str]:
        """The special token of every active control, one per control, to add to each base's tokenizer."""
        return [c.token for c in self.controls]

    def get(self, name: str) -> Control:
        if name not in self._controls:
            raise ConfigError("control", name, f"unknown control; known controls: {', '.join(self._controls)}")
        return self._controls[name]

    def rubric(self, name: str | None) -> str | None:
        return None if name in (None, NO_RUBRIC) else self.all_rubrics[name]

    @property
    def uses_negative(self) -> bool:
        return any(c.negative is not None for c in self.controls)

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]


class ControlTokens:
    """The controls of a vocabulary resolved against one tokenizer: token id -> :class:`Control`."""

    def __init__(self, config: ControlsConfig, tokenizer):
        self.config = config
        self.by_id: dict[int, Control] = {}
        # one lookup per control token (a whole get_vocab() of a 150k vocabulary costs about 0.3 s)
        ids = {c.token: tokenizer.convert_tokens_to_ids(c.token) for c in config.controls}
        missing = [t for t, i in ids.items() if i is None or i == tokenizer.unk_token_id]
        if missing:
            raise ConfigError("controls", missing[0], "this tokenizer lacks the control tokens: add them to the base "
                              "first (add_control_tokens; the engine adds them when a request first holds one)")
        for control in config.controls:
            self.by_id[ids[control.token]] = control
        self.ids = sorted(self.by_id)

    def __contains__(self, token: int) -> bool:
        return token in self.by_id

    def __bool__(self) -> bool:
        return bool(self.by_id)


def add_control_tokens(model, tokenizer, tokens: list[str]) -> int:
    """Add ``tokens`` as special tokens to ``tokenizer`` and give ``model`` embedding rows for them: zero rows,
    added only when the ids pass the embedding matrix (Qwen's has spare rows). The logits of every ordinary token
    stay exactly what they were. Returns how many tokens were new."""
    new = [t for t in tokens if t not in tokenizer.get_vocab()]
    if not new:
        return 0
    tokenizer.add_tokens(new, special_tokens=True)
    embeddings = model.get_input_embeddings()
    rows = embeddings.weight.shape[0]
    if len(tokenizer) > rows:
        import torch

        head = model.get_output_embeddings()
        grow = getattr(head, "resized", None)  # an untied int8 head (experts.quantize.Int8Linear): grown in int8
        if grow is not None:
            name = next(n for n, m in model.named_modules() if m is head)
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, None)  # transformers then resizes the input embedding only
            try:
                model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
            finally:
                setattr(parent, child, head)
            with torch.no_grad():
                model.get_input_embeddings().weight[rows:] = 0
            setattr(parent, child, grow(model.get_input_embeddings().weight.shape[0]))
            return len(new)
        quantized = hasattr(head, "as_linear")  # a tied int8 head (TiedInt8Head): resized in float, wrapped again
        if quantized:
            model.set_output_embeddings(head.as_linear())
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        with torch.no_grad():
            model.get_input_embeddings().weight[rows:] = 0
            out = model.get_output_embeddings()
            if out is not None and out.weight.shape[0] > rows:
                out.weight[rows:] = 0
        if quantized:
            model.set_output_embeddings(type(head)(out.weight, out.bias, head=getattr(head, "head", False)))
    return len(new)
