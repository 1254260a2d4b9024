"""[eval] section of the config.

Example::

    [eval]
    batch_size = 8          # questions per prefix pass (all their options go in one option pass)
    normalize = "char"      # none | token | char  (lm-eval's acc is "none", acc_norm is "char")
    cfg_scale = 1.0         # 1 = plain log-likelihood; > 1 contrasts with the unconditional prefix
    k = 3                   # retrieved passages per question
    context_tokens = 384    # token budget of the packed passages
"""

from __future__ import annotations

from dataclasses import dataclass

from asymmetry.errors import ConfigError

NORMALIZATIONS = ("none", "token", "char")
RETRIEVAL_QUERIES = ("question", "question+options")
PROMPT_STYLES = ("plain", "chat")


@dataclass
class EvalConfig:
    batch_size: int = 8
    normalize: str = "none"
    cfg_scale: float = 1.0
    unconditional_prefix: str = "Answer:"
    prompt_style: str = "plain"  # plain: the templates below; chat: the expert's chat template (its training format)
    prompt_template: str = "Question: {question}\nAnswer:"
    context_template: str = "{context}\n\n"
    option_template: str = " {option}"
    expert: str = "auto"
    retrieval: bool = True
    k: int = 3
    context_tokens: int = 384
    retrieval_query: str = "question"
    top: int = 3

    def __post_init__(self):
        for name in ("batch_size", "k", "context_tokens", "top"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"eval.{name}", value, "use a positive integer")
        if self.normalize not in NORMALIZATIONS:
            raise ConfigError("eval.normalize", self.normalize, f"use one of {', '.join(NORMALIZATIONS)}")
        if isinstance(self.cfg_scale, bool) or not isinstance(self.cfg_scale, (int, float)) or self.cfg_scale < 0:
            raise ConfigError("eval.cfg_scale", self.cfg_scale, "use a non-negative number; 1.0 turns CFG off")
        self.cfg_scale = float(self.cfg_scale)
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
