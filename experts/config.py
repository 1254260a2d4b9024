"""[experts] section of the config: base placement and the list of experts.

Example ``asymmetry.toml``::

    [experts]
    default = "general"
    dtype = "float32"

    [[experts.experts]]
    name = "law"
    description = "Legal questions"
    base = "/models/llama-3-70b-instruct"
    adapter = "/adapters/law"
    system_prompt = "You are a careful legal assistant."
    retrieval = true
    k = 4
    sampler = { temperature = 0.3 }
    negative_prompt = "Answer vaguely and without sources."

When ``experts`` is absent a built-in line-up of the experts science, commonsense, general and scholar is used:
``lineup = "default"`` (all on Qwen2.5-Coder-1.5B-Instruct) or ``lineup = "small"`` (LoRA experts on SmolLM2-135M
and Qwen2.5-Coder-0.5B). A relative
``adapter`` path is resolved against the folder of shipped adapters (``experts/adapters``) first, then the current
folder.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from asymmetry.errors import ConfigError

PACKAGE_ADAPTERS = "builtin:"  # prefix: an adapter shipped in experts/adapters/


def adapters_package_dir() -> Path:
    """Where the default experts' adapters are committed: ``experts/adapters`` in the source tree."""
    return Path(__file__).resolve().parent / "adapters"


@dataclass
class ExpertSpec:
    """One expert: a base model, an optional LoRA adapter, and how it is prompted and sampled."""

    name: str
    description: str = ""
    base: str = "smollm2"
    adapter: str | None = None
    system_prompt: str | None = None
    prompt_template: str | None = None  # a Jinja chat template; None: the model's own chat template
    retrieval: bool = True
    k: int = 4
    sampler: dict[str, Any] = field(default_factory=dict)
    negative_prompt: str | None = None

    def __post_init__(self):
        where = f"experts.experts[{self.name!r}]"
        if not isinstance(self.name, str) or not self.name.replace("-", "").replace("_", "").isalnum():
            raise ConfigError("experts.experts.name", self.name, "use letters, digits, '-' or '_' (e.g. 'science')")
        if self.name == "__base__":
            raise ConfigError("experts.experts.name", self.name, "'__base__' is reserved by peft; choose another")
        if not isinstance(self.base, str) or not self.base:
            raise ConfigError(f"{where}.base", self.base, "name a base: smollm2, qwen2.5-coder-0.5b, qwen2.5-coder-1.5b, a folder or .gguf")
        if self.adapter is not None and (not isinstance(self.adapter, str) or not self.adapter):
            raise ConfigError(f"{where}.adapter", self.adapter, "give an adapter folder path, or omit it for none")
        if not isinstance(self.k, int) or self.k < 0:
            raise ConfigError(f"{where}.k", self.k, "use a number of passages >= 0")
        if not isinstance(self.retrieval, bool):
            raise ConfigError(f"{where}.retrieval", self.retrieval, "use true or false")
        if not isinstance(self.sampler, dict):
            raise ConfigError(f"{where}.sampler", self.sampler, "use a table of sampler settings, e.g. {temperature=0.7}")
        if self.prompt_template is not None and "{{" not in self.prompt_template and "{%" not in self.prompt_template:
            raise ConfigError(f"{where}.prompt_template", self.prompt_template, "give a Jinja chat template, or omit it")


NEGATIVE_RUBRIC = "Answer carelessly: guess, ignore the question's details and the provided passages."

XL_BASE = "qwen2.5-coder-1.5b"

# The default line-up: every expert on the Qwen2.5-Coder-1.5B-Instruct base (int8 weights on CPU), greedy decoding
# for a deterministic factual answer; the experts differ by system prompt (and so by what the router sends them).
# Measured in the README's free-form QA table against the small line-up below and the bare bases.
DEFAULT_EXPERTS: list[ExpertSpec] = [
    ExpertSpec(
        name="science",
        description="Grade-school to college science (ARC, OpenBookQA, SciQ)",
        base=XL_BASE,
        system_prompt="You are a science tutor. Answer the question correctly and concisely.",
        sampler={"temperature": 0.0},
        negative_prompt=NEGATIVE_RUBRIC,
    ),
    ExpertSpec(
        name="commonsense",
        description="Everyday situations, social reasoning, what happens next (CommonsenseQA, SocialIQA, HellaSwag)",
        base=XL_BASE,
        system_prompt="You answer everyday questions with common sense, concisely.",
        sampler={"temperature": 0.0},
        negative_prompt=NEGATIVE_RUBRIC,
    ),
    ExpertSpec(
        name="general",
        description="General questions; the router's low-confidence fallback",
        base=XL_BASE,
        system_prompt="You are a helpful assistant.",
        sampler={"temperature": 0.0},
        negative_prompt=NEGATIVE_RUBRIC,
    ),
    ExpertSpec(
        name="scholar",
        description="Academic and factual questions: people, places, history, works (MMLU, NQ, TriviaQA)",
        base=XL_BASE,
        system_prompt="You are a knowledgeable scholar. Answer the question accurately.",
        sampler={"temperature": 0.0},
        negative_prompt=NEGATIVE_RUBRIC,
    ),
]

# The small line-up (``[experts] lineup = "small"``): LoRA experts on SmolLM2-135M and Qwen2.5-Coder-0.5B, trained
# for multiple-choice option text; ten times cheaper per token, far less often right on free-form questions.
SMALL_EXPERTS: list[ExpertSpec] = [
    # no adapter: the committed `science` LoRA, trained twice (the answer's loss; then every option ranked too), is
    # ahead of the bare base on ARC-Easy and SciQ test/held-out questions but behind its plain format on ARC-Challenge
    # and OpenBookQA; pooled +0.025 +- 0.020, short of two standard errors (README, Experts), so it left the line-up;
    # `builtin:science` and `asymmetry expert train-defaults science` still give it
    ExpertSpec(
        name="science",
        description="Grade-school to college science (ARC, OpenBookQA, SciQ) on the bare SmolLM2 base",
        base="smollm2",
        adapter=None,
        system_prompt="You are a science tutor. Answer the question correctly and concisely.",
        sampler={"temperature": 0.3},
        negative_prompt=NEGATIVE_RUBRIC,
    ),
    ExpertSpec(
        name="commonsense",
        description="Everyday situations, social reasoning, what happens next (CommonsenseQA, SocialIQA, HellaSwag)",
        base="smollm2",
        adapter=PACKAGE_ADAPTERS + "commonsense",
        system_prompt="You answer everyday questions with common sense, concisely.",
        sampler={"temperature": 0.3},
        negative_prompt=NEGATIVE_RUBRIC,
    ),
    ExpertSpec(
        name="general",
        description="The bare SmolLM2 base; the router's low-confidence fallback",
        base="smollm2",
        adapter=None,
        system_prompt="You are a helpful assistant. Use the provided passages when they are relevant.",
        sampler={"temperature": 0.7},
        negative_prompt=NEGATIVE_RUBRIC,
    ),
    # no adapter: the committed `scholar` LoRA (MMLU option text) scored 0.280 on 150 MMLU test questions against
    # 0.340 for this bare base in eval mc's plain format (-0.060 +- 0.033 paired; README, Experts), so it was dropped
    # from the line-up; `asymmetry expert train-defaults scholar` still reproduces it
    ExpertSpec(
        name="scholar",
        description="Academic and factual questions (MMLU-style) on the bare Qwen2.5-Coder-0.5B base",
        base="qwen2.5-coder-0.5b",
        adapter=None,
        system_prompt="You are a knowledgeable scholar. Answer the question accurately.",
        sampler={"temperature": 0.3},
        negative_prompt=NEGATIVE_RUBRIC,
    ),
]

LINEUPS: dict[str, list[ExpertSpec]] = {"default": DEFAULT_EXPERTS, "small": SMALL_EXPERTS}
BUILTIN_EXPERTS = DEFAULT_EXPERTS


@dataclass
class ExpertsConfig:
    default: str = "general"
    dtype: str = "float32"
    device_map: Any = None  # None, "auto", or {module: device}
    max_memory: dict[str, str] | None = None  # e.g. {"0": "20GiB", "cpu": "60GiB"}
    offload_folder: str | None = None
    quantization: str | None = None  # "4bit" | "8bit" (CUDA + bitsandbytes)
    quantize: str = "auto"  # CPU weight-only linears: "none" | "int8" | "int4" | "auto" (1B+ params: int4 from a mostly
    # 4-bit GGUF, else int8; smaller bases float)
    quantize_head: bool = True  # with those, an untied output head in int8 too
    adapters_dir: str | None = None  # where `asymmetry expert train` writes adapters (default: <home>/adapters)
    lineup: str = "default"  # the built-in experts when `experts` is absent: "default" (1.5B base) or "small"
    experts: list[Any] | None = None  # None: the built-in line-up

    def __post_init__(self):
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise ConfigError("experts.dtype", self.dtype, "use auto, float32, bfloat16 or float16")
        if self.quantization not in (None, "4bit", "8bit"):
            raise ConfigError("experts.quantization", self.quantization, "use 4bit or 8bit, or omit it")
        if self.lineup not in LINEUPS:
            raise ConfigError("experts.lineup", self.lineup, f"use one of {', '.join(LINEUPS)}")
        if self.quantize not in ("none", "int8", "int4", "auto"):
            raise ConfigError("experts.quantize", self.quantize, "use none, int8, int4 or auto (int4 or int8 for bases of 1B+)")
        if not isinstance(self.quantize_head, bool):
            raise ConfigError("experts.quantize_head", self.quantize_head, "use true or false")
        if self.device_map is not None and not isinstance(self.device_map, (str, dict)):
            raise ConfigError("experts.device_map", self.device_map, "use 'auto' or a table {module = device}")
        if self.max_memory is not None and not isinstance(self.max_memory, dict):
            raise ConfigError("experts.max_memory", self.max_memory, "use a table like {0 = '20GiB', cpu = '60GiB'}")
        if self.experts is not None:
            if not isinstance(self.experts, list):
                raise ConfigError("experts.experts", self.experts, "use a list of [[experts.experts]] tables")
            specs, seen = [], set()
            for i, item in enumerate(self.experts):
                if isinstance(item, dict):
                    unknown = sorted(set(item) - set(ExpertSpec.__dataclass_fields__))
                    if unknown:
                        raise ConfigError(
                            f"experts.experts[{i}].{unknown[0]}", item[unknown[0]],
                            f"unknown key; valid keys: {', '.join(ExpertSpec.__dataclass_fields__)}",
                        )
                    if "name" not in item:
                        raise ConfigError(f"experts.experts[{i}].name", None, "every expert needs a name")
                    item = ExpertSpec(**item)
                elif not isinstance(item, ExpertSpec):
                    raise ConfigError(f"experts.experts[{i}]", item, "use a table with at least name and base")
                if item.name in seen:
                    raise ConfigError(f"experts.experts[{i}].name", item.name, "duplicate expert name; rename one")
                seen.add(item.name)
                specs.append(item)
            self.experts = specs
        names = [e.name for e in self.specs()]
        if self.default not in names:
            raise ConfigError("experts.default", self.default, f"name one of the experts: {', '.join(names)}")

    def specs(self) -> list[ExpertSpec]:
        return list(self.experts) if self.experts is not None else [
            ExpertSpec(**{k: getattr(e, k) for k in ExpertSpec.__dataclass_fields__}) for e in LINEUPS[self.lineup]
        ]
