"""Diversity and surprise metrics of generated text (issue 17 part 5: control-steered decoding against fixed
samplers on open-ended prompts). Pure functions.

Text is compared as lowercase word tokens (:func:`words`: runs of letters and digits, an inner apostrophe kept:
"don't" is one word; punctuation dropped).

- ``distinct_n`` (Li et al. 2016, "A Diversity-Promoting Objective Function for Neural Conversation Models"): distinct
  n-grams over all n-grams. Over several texts the n-grams of each text are pooled (no n-gram spans two texts): the
  diversity of a system's outputs taken together.
- ``repetition_rate`` (seq-rep-n of Welleck et al. 2019, "Neural Text Generation with Unlikelihood Training"): the
  share of a text's n-grams (default 4-grams) that repeat an earlier n-gram of the same text, ``1 - distinct/total``.
  A text stuck in a loop scores near 1, varied prose near 0.
- ``surprise_gaps``: per ``stats.segments`` entry of the sampler (``{control, start, end, tau,
  mean_surprise_bits}``), the observed mean surprise minus the segment's mirostat target: how well a target held.

A text too short to hold one n-gram has no value (None), never NaN.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)*")


def words(text: str) -> list[str]:
    """Lowercase word tokens of ``text`` (letters and digits; "don't" one word; punctuation dropped)."""
    return _WORD.findall(text.lower())


def ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    if n < 1:
        raise ValueError(f"n = {n}: use n >= 1")
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def _all_ngrams(texts: str | Iterable[str], n: int) -> list[tuple[str, ...]]:
    texts = [texts] if isinstance(texts, str) else list(texts)
    return [g for text in texts for g in ngrams(words(text), n)]


def distinct_n(texts: str | Iterable[str], n: int) -> float | None:
    """Distinct n-grams / all n-grams of ``texts`` (one text, or several pooled); None without any n-gram."""
    grams = _all_ngrams(texts, n)
    return len(set(grams)) / len(grams) if grams else None


def repetition_rate(text: str, n: int = 4) -> float | None:
    """The share of ``text``'s n-grams that repeat an earlier one (seq-rep-n); None without any n-gram."""
    grams = ngrams(words(text), n)
    return 1.0 - len(set(grams)) / len(grams) if grams else None


def surprise_gaps(segments: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Each segment that has a mirostat target and a measured mean surprise, with ``gap`` = mean surprise - tau (bits)
    and its length in tokens."""
    out = []
    for seg in segments:
        tau, mean = seg.get("tau"), seg.get("mean_surprise_bits")
        if tau is None or mean is None:
            continue
        out.append({"control": seg.get("control"), "tau": float(tau), "mean_surprise_bits": float(mean),
                    "gap": float(mean) - float(tau), "tokens": int(seg["end"]) - int(seg["start"])})
    return out


def text_metrics(text: str) -> dict[str, float | None]:
    """distinct-2, distinct-3 and the 4-gram repetition rate of one text, and its length in words."""
    return {"distinct_2": distinct_n(text, 2), "distinct_3": distinct_n(text, 3),
            "repetition_4": repetition_rate(text, 4), "words": float(len(words(text)))}
