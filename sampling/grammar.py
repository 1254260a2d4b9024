"""Grammar constraints compiled by xgrammar into per-step token bitmasks.

GBNF/EBNF grammars (``root ::= ...``, the llama.cpp notation that xgrammar reads) and JSON schemas are compiled
once per tokenizer (xgrammar caches compiled grammars); a :class:`GrammarMask` stage holds one matcher per
generation. A syntax error is reported as an :class:`AsymmetryError` with its line and column.

Shapes: B = rows (1 in the chain), V = vocabulary (the model's lm_head width), W = ceil(V / 32) bitmask words.
"""

from __future__ import annotations

import json
import re
import threading
import weakref
from pathlib import Path
from typing import Any

import torch

from asymmetry.errors import AsymmetryError
from asymmetry.integrity import read_utf8

_LOCK = threading.Lock()
_COMPILERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _compiler(tokenizer, vocab_size: int):
    import xgrammar as xgr

    with _LOCK:
        per_tok = _COMPILERS.setdefault(tokenizer, {})
        if vocab_size not in per_tok:
            info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size)
            per_tok[vocab_size] = xgr.GrammarCompiler(info, max_threads=2)
        return per_tok[vocab_size]


def _clean(exc: Exception) -> str:
    """xgrammar messages start with a C++ source location; keep the part a user can act on."""
    text = str(exc).strip()
    text = re.sub(r"^\[[^\]]*\]\s*\S+:\d+:\s*", "", text)
    return text


def compile_grammar(tokenizer, vocab_size: int, *, grammar: str | None = None, json_schema: str | dict | None = None,
                    source: str = "grammar"):
    """Compile a GBNF/EBNF grammar text or a JSON schema (text or dict) for ``tokenizer``.

    ``source`` names where the text came from (a file path) in error messages.
    """
    if (grammar is None) == (json_schema is None):
        raise AsymmetryError("pass exactly one of grammar= or json_schema= to compile_grammar")
    compiler = _compiler(tokenizer, vocab_size)
    if grammar is not None:
        return _parsed(grammar, source, compiler.compile_grammar)
    if isinstance(json_schema, str):
        try:
            schema_obj = json.loads(json_schema)
        except json.JSONDecodeError as exc:
            raise AsymmetryError(f"{source} is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}; "
                                 "fix the JSON schema there") from None
    else:
        schema_obj = json_schema
    if not isinstance(schema_obj, dict):
        raise AsymmetryError(f"{source} must be a JSON object (a JSON schema), got {type(schema_obj).__name__}")
    try:
        return compiler.compile_json_schema(json.dumps(schema_obj), any_whitespace=False, strict_mode=True)
    except RuntimeError as exc:
        raise AsymmetryError(f"{source} is not a JSON schema xgrammar supports: {_clean(exc)}; "
                             "fix or simplify the schema") from None


def check_constraint(config) -> None:
    """Read and parse a SamplerConfig's grammar before any model loads (no tokenizer needed), so a missing file or a
    syntax error is reported at once, in the same words :func:`compile_grammar` uses."""
    constraint = read_constraint(config)
    if constraint is None or constraint.get("grammar") is None:
        return
    import xgrammar as xgr

    _parsed(constraint["grammar"], constraint["source"], xgr.Grammar.from_ebnf)


def _parsed(grammar: str, source: str, parse):
    """``parse(grammar)``, with an empty grammar or a syntax error reported as an AsymmetryError naming ``source``."""
    if not grammar.strip():
        raise AsymmetryError(f"{source} is empty: write a grammar with a root rule, e.g. root ::= \"yes\" | \"no\"")
    try:
        return parse(grammar)
    except RuntimeError as exc:
        raise AsymmetryError(f"{source} has a syntax error: {_clean(exc)}; fix the grammar at that line and "
                             "column (GBNF/EBNF: rules are `name ::= ...`, the start rule is `root`)") from None


def read_constraint(config) -> dict[str, Any] | None:
    """The grammar constraint of a SamplerConfig as keyword arguments for :func:`compile_grammar` (or None)."""
    if config.grammar is not None:
        return {"grammar": config.grammar, "source": "sampler.grammar"}
    if config.grammar_file is not None:
        path = Path(config.grammar_file)
        if not path.is_file():
            raise AsymmetryError(f"grammar file {path} does not exist: pass an existing GBNF/EBNF file")
        return {"grammar": read_utf8(path, "grammar file"), "source": f"grammar file {path}"}
    if config.json_schema is not None:
        text = config.json_schema
        if not text.lstrip().startswith("{"):
            path = Path(text)
            if not path.is_file():
                raise AsymmetryError(f"JSON schema file {path} does not exist: pass an existing .json file or the "
                                     "schema text itself")
            return {"json_schema": read_utf8(path, "JSON schema file"), "source": f"JSON schema file {path}"}
        return {"json_schema": text, "source": "sampler.json_schema"}
    return None


class GrammarMask:
    """Mask every token the grammar does not allow next; stateful (one xgrammar matcher per generation)."""

    name = "grammar"

    def __init__(self, compiled, vocab_size: int, stop_token_ids: list[int] | None = None):
        import xgrammar as xgr

        self._xgr = xgr
        self.compiled = compiled
        self.vocab_size = vocab_size
        self.matcher = xgr.GrammarMatcher(compiled, override_stop_tokens=stop_token_ids or None)
        self.bitmask = xgr.allocate_token_bitmask(1, vocab_size)  # (1, W)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.matcher.is_terminated():
            return scores
        if self.matcher.fill_next_token_bitmask(self.bitmask):
            bitmask = self.bitmask if scores.device.type == "cpu" else self.bitmask.to(scores.device)
            scores = scores.clone() if scores.requires_grad else scores
            self._xgr.apply_token_bitmask_inplace(scores, bitmask, vocab_size=self.vocab_size)  # (1, V)
        return scores

    def accept(self, token: int) -> None:
        if not self.matcher.is_terminated() and not self.matcher.accept_token(int(token)):
            raise AsymmetryError(f"token {token} violates the grammar: put the grammar stage after every stage that "
                                 "can pick a token (mirostat, greedy) in sampler.stages")

    def reset(self) -> None:
        self.matcher.reset()

    @property
    def completed(self) -> bool:
        return self.matcher.is_completed() or self.matcher.is_terminated()

    @property
    def terminated(self) -> bool:
        return self.matcher.is_terminated()
