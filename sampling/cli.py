"""The sampler's command-line flags, shared by ``asymmetry generate``, ``ask``, ``chat`` and ``eval``.

``add_sampler_arguments(parser)`` adds every sampler flag with default ``None`` (so only what the user typed
overrides the config); ``sampler_config_from_args(args, base)`` applies them to a base :class:`SamplerConfig`.
"""

from __future__ import annotations

import argparse
from dataclasses import replace

from asymmetry.sampling.config import STAGE_NAMES, SamplerConfig

# flag -> (SamplerConfig field, type, help)
_FLAGS: list[tuple[str, str, type, str]] = [
    ("--max-tokens", "max_tokens", int, "maximum number of generated tokens"),
    ("--seed", "seed", int, "random seed (the same seed gives the same text); default: random, reported in stats"),
    ("--temperature", "temperature", float, "temperature; 0 means greedy"),
    ("--top-k", "top_k", int, "keep the k most likely tokens (0: off)"),
    ("--top-p", "top_p", float, "nucleus: keep the most likely tokens up to this probability mass (1: off)"),
    ("--min-p", "min_p", float, "drop tokens less likely than this fraction of the top token (0: off)"),
    ("--repeat-penalty", "repeat_penalty", float, ("llama.cpp repetition penalty over the last --penalty-last-n "
                                                  "tokens (1: off)")),
    ("--frequency-penalty", "frequency_penalty", float, "subtract this times the count of each recent token"),
    ("--presence-penalty", "presence_penalty", float, "subtract this from every recent token"),
    ("--penalty-last-n", "penalty_last_n", int, "window of the penalties (-1: whole context, 0: off)"),
    ("--cfg-scale", "cfg_scale", float, "classifier-free guidance scale (1: off unless --negative-prompt is set)"),
    ("--cfg-rescale", "cfg_rescale", float, "blend of std-rescaled CFG output in [0, 1] (0: off)"),
    ("--negative-prompt", "negative_prompt", str, "negative prompt for CFG (run in the same batched forward)"),
    ("--mirostat", "mirostat", int, "mirostat version: 1 or 2 (0: off)"),
    ("--tau", "tau", float, "mirostat target surprise in bits (held from above and below)"),
    ("--eta", "eta", float, "mirostat learning rate"),
    ("--mirostat-max-heat", "mirostat_max_heat", float, ("how far mirostat may raise the temperature (a factor, "
                                                         "default 4) when truncation alone cannot reach --tau; "
                                                         "1: off")),
    ("--grammar", "grammar_file", str, "GBNF/EBNF grammar file (root rule: root)"),
    ("--json-schema", "json_schema", str, "JSON schema file the output must follow"),
]


def add_sampler_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the sampler flags to ``parser`` (all default to None: the config's value is kept)."""
    group = parser.add_argument_group("sampler")
    for flag, dest, typ, help_text in _FLAGS:
        kw = {"choices": [0, 1, 2]} if dest == "mirostat" else {}
        metavar = "FILE" if dest in ("grammar_file", "json_schema") else {int: "N", float: "X", str: "TEXT"}[typ]
        if dest == "mirostat":
            metavar = None
        group.add_argument(flag, dest=f"sampler_{dest}", type=typ, default=None, help=help_text, metavar=metavar, **kw)
    group.add_argument("--greedy", dest="sampler_greedy", action="store_true", default=None,
                       help="always pick the most likely token")
    group.add_argument("--stop", dest="sampler_stop", action="append", default=None, metavar="TEXT",
                       help="stop when this text appears (repeatable); it is not part of the output")
    group.add_argument("--stages", dest="sampler_stages", default=None, metavar="A,B,...",
                       help=f"order of the stage chain, comma-separated, from: {','.join(STAGE_NAMES)}")


def sampler_config_from_args(args: argparse.Namespace, base: SamplerConfig | None = None) -> SamplerConfig:
    """``base`` (default: built-in defaults) with every sampler flag the user gave applied; validated again."""
    base = base or SamplerConfig()
    changes = {}
    for _, dest, _, _ in _FLAGS:
        value = getattr(args, f"sampler_{dest}", None)
        if value is not None:
            changes[dest] = value
    if "grammar_file" in changes or "json_schema" in changes:  # a flag replaces any constraint from the config
        changes = {"grammar": None, "grammar_file": None, "json_schema": None, **changes}
    if getattr(args, "sampler_greedy", None):
        changes["greedy"] = True
    if getattr(args, "sampler_stop", None):
        changes["stop"] = list(base.stop) + list(args.sampler_stop)
    if getattr(args, "sampler_stages", None):
        changes["stages"] = [s.strip() for s in args.sampler_stages.split(",") if s.strip()]
    return replace(base, **changes)


def add_generate_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of ``asymmetry generate`` (the command itself lives with the application's commands)."""
    p.add_argument("prompt", help="the prompt text ('-' reads it from stdin)")
    p.add_argument("--model", default=None, metavar="PATH",
                   help="a local Hugging Face folder, a .gguf file, or a built-in name (default: smollm2)")
    p.add_argument("--chat", action="store_true", help="wrap the prompt (and negative prompt) in the chat template")
    p.add_argument("--system", default=None, help="system message for --chat")
    p.add_argument("--json", action="store_true",
                   help='print {"text", "tokens", "stats"} as JSON instead of streaming the text')
    add_sampler_arguments(p)
