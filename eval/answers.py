"""Free-form answer metrics, the one module for them (``asymmetry eval qa``). Pure functions.

Answers are compared after SQuAD-style normalisation (:func:`normalize_answer`): lowercase, punctuation removed,
the articles a/an/the removed, whitespace collapsed. Punctuation is ASCII punctuation and every Unicode punctuation
character (curly quotes, dashes), removed without a space as SQuAD's own script does. Citation markers (``[1]``, ``[1, 2]``) are taken out of a reply
before its answer is scored, so a cited answer is not penalised (and a marker's digit never matches a numeric answer).

Per answer (:func:`score_answer`), against every gold alias (the best alias counts):

- ``em``: the normalised reply equals a normalised alias; ``f1``: token F1 (precision and recall of the shared tokens);
- ``contains``: a normalised alias occurs in the normalised reply as whole tokens ("1972" is in "in December 1972.",
  "art" is not in "party") — the primary metric: a small model's replies are sentences, rarely the bare answer;
- ``length``: words of the reply (citation markers and lone punctuation not counted);
- ``cited``: the passage numbers the reply cites; ``citation_valid``: every cited number is a passage of the prompt
  (None when nothing is cited);
- ``answer_in_passages``: an alias occurs (whole tokens) in a passage put into the prompt (title and text);
  ``passages_with_answer``: which ones;
- ``grounded``: for a right answer (``contains``) whose answer is in some passage, whether it cites such a passage
  (None otherwise);
- ``marked``: the reply says its answer is not in the sources (the engine's ``(not in the sources)``).

Over a run (:func:`qa_metrics`, primary ``contains``): the means of em/f1/contains/length, ``cite_rate`` (answers
citing anything), ``citation_valid`` (of those, the share citing only existing passages), ``grounding`` (the share
of grounded answers among right answers whose answer is in the passages), ``retrieval_ceiling`` (questions whose
answer is in the prompt's passages), ``contains`` split by ``answer_in_passages`` (do passages without the answer
mislead?) and ``marked`` split likewise (does the reply say so when the passages lack the answer, and only then?).
A share over no questions is None (undefined), never NaN.
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from asymmetry.engine import NOT_IN_SOURCES

PRIMARY_METRIC = "contains"

_CITATION = re.compile(r"\[\s*(\d+(?:\s*[,;]\s*\d+)*)\s*\]")  # [1]  [1, 2]  [1;3]  ([1][2] is two markers)
_ARTICLES = re.compile(r"\b(?:a|an|the)\b")
_ASCII_PUNCT = set(string.punctuation)


def _is_punct(ch: str) -> bool:
    return ch in _ASCII_PUNCT or unicodedata.category(ch).startswith("P")


def normalize_answer(text: str) -> str:
    """Lowercase, drop punctuation, drop the articles a/an/the, collapse whitespace (SQuAD's normalisation)."""
    text = "".join(ch for ch in text.lower() if not _is_punct(ch))
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def answer_tokens(text: str) -> list[str]:
    return normalize_answer(text).split()


def strip_citations(text: str) -> str:
    """The reply without its ``[n]`` citation markers."""
    return _CITATION.sub(" ", text)


def citations(text: str) -> list[int]:
    """The passage numbers cited in ``text`` (``[1]``, ``[1, 2]``, ``[1][3]``), ascending, each once."""
    found: set[int] = set()
    for match in _CITATION.finditer(text):
        found.update(int(n) for n in re.split(r"\s*[,;]\s*", match.group(1)))
    return sorted(found)


def exact_match(prediction: str, aliases: Iterable[str]) -> float:
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(a) for a in aliases))


def _f1(pred: list[str], gold: list[str]) -> float:
    if not pred or not gold:
        return float(pred == gold)
    same = sum((Counter(pred) & Counter(gold)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(gold)
    return 2 * precision * recall / (precision + recall)


def token_f1(prediction: str, aliases: Iterable[str]) -> float:
    """Token F1 against the best alias."""
    pred = answer_tokens(prediction)
    return max((_f1(pred, answer_tokens(a)) for a in aliases), default=0.0)


def _has_run(tokens: Sequence[str], needle: Sequence[str]) -> bool:
    n = len(needle)
    if n == 0:
        return False
    return any(list(tokens[i : i + n]) == list(needle) for i in range(len(tokens) - n + 1))


def contains_answer(text: str, aliases: Iterable[str]) -> bool:
    """A normalised alias occurs in the normalised ``text`` as a run of whole tokens (an alias that normalises to
    nothing, such as "The", never matches)."""
    tokens = answer_tokens(text)
    return any(_has_run(tokens, answer_tokens(a)) for a in aliases)


def passages_with_answer(passages: Sequence[str], aliases: Sequence[str]) -> list[int]:
    """1-based numbers of the passages (prompt order) that contain an alias as whole tokens."""
    return [i for i, p in enumerate(passages, 1) if contains_answer(p, aliases)]


def score_answer(reply: str, aliases: Sequence[str], passages: Sequence[str] = ()) -> dict[str, Any]:
    """Every per-answer score of ``reply`` against the gold ``aliases``, given the passages put into its prompt (in
    their numbered order: passage ``n`` is ``passages[n - 1]``)."""
    answer = strip_citations(reply)
    cited = citations(reply)
    right = contains_answer(answer, aliases)
    with_answer = passages_with_answer(passages, aliases)
    return {
        "em": exact_match(answer, aliases),
        "f1": token_f1(answer, aliases),
        "contains": float(right),
        "length": len([w for w in answer.split() if any(c.isalnum() for c in w)]),
        "cited": cited,
        "citation_valid": all(1 <= n <= len(passages) for n in cited) if cited else None,
        "answer_in_passages": bool(with_answer),
        "passages_with_answer": with_answer,
        "grounded": bool(set(cited) & set(with_answer)) if right and with_answer else None,
        "marked": NOT_IN_SOURCES in reply.lower(),
    }


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def qa_metrics(scores: Sequence[Mapping[str, Any]]) -> dict[str, float | None]:
    """Metrics over per-answer scores (:func:`score_answer` dicts); primary ``contains``. Undefined shares are None."""
    citing = [s for s in scores if s["cited"]]
    eligible = [s for s in scores if s["grounded"] is not None]
    inside = [s for s in scores if s["answer_in_passages"]]
    outside = [s for s in scores if not s["answer_in_passages"]]
    return {
        PRIMARY_METRIC: _mean([s["contains"] for s in scores]),
        "em": _mean([s["em"] for s in scores]),
        "f1": _mean([s["f1"] for s in scores]),
        "length": _mean([float(s["length"]) for s in scores]),
        "cite_rate": _mean([float(bool(s["cited"])) for s in scores]),
        "citation_valid": _mean([float(s["citation_valid"]) for s in citing]),
        "grounding": _mean([float(s["grounded"]) for s in eligible]),
        "retrieval_ceiling": _mean([float(s["answer_in_passages"]) for s in scores]),
        "contains_answer_in_passages": _mean([s["contains"] for s in inside]),
        "contains_answer_not_in_passages": _mean([s["contains"] for s in outside]),
        "marked_answer_in_passages": _mean([float(s.get("marked", False)) for s in inside]),
        "marked_answer_not_in_passages": _mean([float(s.get("marked", False)) for s in outside]),
        "n_answer_in_passages": float(len(inside)),
        "n": float(len(scores)),
    }
