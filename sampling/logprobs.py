"""Log-probabilities of the generated tokens (OpenAI's ``logprobs`` / ``top_logprobs``), for the rows that ask.

``SamplerConfig(logprobs=N)`` (``N`` alternatives, 0-20) makes the loop record, for every generated token the user
sees, a :class:`TokenLogprob`: the token's text and UTF-8 bytes, its log-probability and the ``N`` most likely
tokens of the same step. A request that does not ask computes nothing.

Which distribution: the model's log-softmax over the request's row AFTER the combiner stages (CFG
``uncond + s * (cond - uncond)``, the adapter mixture) and BEFORE every other stage (penalties, grammar,
temperature, top-k/top-p/min-p, mirostat): the distribution the sampler starts from, the same whatever the
truncation settings. Control tokens a base may not emit are masked out of it (they are never drawn). So with
greedy decoding, no penalties and no grammar, the chosen token is the first alternative and its log-probability the
highest; under sampling or a grammar the chosen token may be a less likely one, with its own (lower) number.

Hidden tokens never appear: a generated special or control token (not part of the text) gets no entry, and the
alternatives are drawn from the visible tokens only (special tokens, control tokens, EOS and ids beyond the
tokenizer are left out, not renormalised away). ``offset`` is where the token's text starts in the generated text
(characters); the entries of a request whose stop string cut the text end with the token that holds the cut.
``bytes`` concatenate to the text's UTF-8; the ``token`` strings concatenate to the text unless a character is split
over two tokens (then each part reads as U+FFFD, as OpenAI's do).

Shapes: V = vocabulary.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch

from asymmetry.sampling.config import MAX_TOP_LOGPROBS

FLOOR = -9999.0  # what a token the distribution rules out reports (JSON has no -inf; OpenAI uses the same floor)
_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")


__all__ = ["MAX_TOP_LOGPROBS", "Alternative", "TextDelta", "TokenLogprob", "TokenTexts", "legacy"]


class Alternative(NamedTuple):
    token: str
    utf8: bytes
    logprob: float


@dataclass
class TokenLogprob:
    """One generated token: its text, UTF-8 bytes, log-probability and the most likely tokens of its step."""

    token: str
    utf8: bytes
    logprob: float
    top: list[Alternative] = field(default_factory=list)  # most likely first
    offset: int = 0  # where its text starts in the generated text (characters)
    end: int = 0  # where the text it completes ends (an incomplete character is not counted yet)

    def to_openai(self) -> dict[str, Any]:
        """The chat shape: ``{token, logprob, bytes, top_logprobs: [{token, logprob, bytes}]}``."""
        return {"token": self.token, "logprob": self.logprob, "bytes": list(self.utf8),
                "top_logprobs": [{"token": a.token, "logprob": a.logprob, "bytes": list(a.utf8)} for a in self.top]}


class TextDelta(str):
    """A text delta that also carries the :class:`TokenLogprob` of the tokens it completes (possibly with no text:
    a token whose text was cut by a stop string). Plain ``str`` everywhere else."""

    logprobs: list[TokenLogprob]

    def __new__(cls, text: str, logprobs: list[TokenLogprob]):
        out = super().__new__(cls, text)
        out.logprobs = logprobs
        return out

    def __reduce__(self):  # pickles (a delta crossing a process boundary) with its entries
        return TextDelta, (str(self), self.logprobs)


def legacy(entries: list[TokenLogprob]) -> dict[str, Any]:
    """The completions (legacy) shape: ``{tokens, token_logprobs, top_logprobs: [{token: logprob}], text_offset}``."""
    top = []
    for e in entries:
        alternatives: dict[str, float] = {}
        for a in e.top:
            alternatives.setdefault(a.token, a.logprob)  # two ids with one text: the likelier one
        top.append(alternatives)
    return {"tokens": [e.token for e in entries], "token_logprobs": [e.logprob for e in entries],
            "top_logprobs": top, "text_offset": [e.offset for e in entries]}


class TokenTexts:
    """The UTF-8 bytes of each token id of one tokenizer (looked up once per id), and the ids hidden from users."""

    def __init__(self, tokenizer, vocab_size: int, hidden: set[int]):
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        n = len(tokenizer)
        hidden = set(hidden) | set(getattr(tokenizer, "all_special_ids", []) or [])
        decoder = getattr(tokenizer, "added_tokens_decoder", {}) or {}
        hidden |= {i for i, t in decoder.items() if getattr(t, "special", False)}
        hidden |= set(range(n, vocab_size))  # embedding rows no token maps to
        self.hidden = torch.tensor(sorted(h for h in hidden if 0 <= h < vocab_size), dtype=torch.long)  # (H,)
        self._hidden_set = {int(h) for h in self.hidden}
        self.mode = self._mode(tokenizer)
        self._bytes: dict[int, bytes] = {}
        self._byte_of_char = {c: b for b, c in _bytes_to_unicode().items()} if self.mode == "byte_level" else {}

    @staticmethod
    def _mode(tokenizer) -> str:
        backend = getattr(tokenizer, "backend_tokenizer", None)
        decoder = getattr(backend, "decoder", None)
        if decoder is not None and "ByteLevel" in repr(decoder):
            return "byte_level"
        if decoder is not None and ("Metaspace" in repr(decoder) or "ByteFallback" in repr(decoder)):
            return "metaspace"
        return "decode"

    def is_hidden(self, token: int) -> bool:
        return token in self._hidden_set

    def bytes_of(self, token: int) -> bytes:
        out = self._bytes.get(token)
        if out is None:
            out = self._bytes[token] = self._lookup(token)
        return out

    def text_of(self, token: int) -> str:
        return self.bytes_of(token).decode("utf-8", errors="replace")

    def _lookup(self, token: int) -> bytes:
        piece = self.tokenizer.convert_ids_to_tokens(token)
        if isinstance(piece, str):
            if self.mode == "byte_level" and all(c in self._byte_of_char for c in piece):
                return bytes(self._byte_of_char[c] for c in piece)
            if self.mode == "metaspace":
                match = _BYTE_TOKEN.fullmatch(piece)
                return bytes([int(match.group(1), 16)]) if match else piece.replace("\u2581", " ").encode("utf-8")
        return self.tokenizer.decode([token], skip_special_tokens=False).encode("utf-8")

    def entry(self, logprobs: torch.Tensor, token: int, n: int) -> TokenLogprob:
        """``token``'s entry under ``logprobs`` (V,), with the ``n`` most likely visible tokens."""
        top: list[Alternative] = []
        if n > 0:
            visible = logprobs.index_fill(0, self.hidden.to(logprobs.device), float("-inf")) if len(self.hidden) \
                else logprobs  # (V,)
            values, ids = torch.topk(visible, min(n, visible.shape[0]))  # (n,) each
            for value, i in zip(values.tolist(), ids.tolist()):
                if value != float("-inf"):
                    top.append(Alternative(self.text_of(i), self.bytes_of(i), _finite(value)))
        return TokenLogprob(self.text_of(token), self.bytes_of(token), _finite(float(logprobs[token])), top)


def _finite(value: float) -> float:
    return min(0.0, value) if value > FLOOR else FLOOR


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table, which byte-level BPE vocabularies are written in."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(printable, chars)}
