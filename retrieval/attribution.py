"""Post-hoc attribution: which numbered passages hold what a reply says, for a reply that cites none.

Small models answer right from the passages of their prompt but often leave out the ``[n]`` the instruction asks
for. The engine then cites for them: the passages that contain the reply's *new* words — its content words that the
question does not already hold (``"Leonardo da Vinci painted it"`` for ``"Who painted the Mona Lisa?"``: leonardo,
da, vinci). A passage is cited when it holds at least :data:`MIN_COVERAGE` of them and no other passage holds more
(at most :data:`MAX_CITED` passages). A reply that cites already, says the sources lack the answer, or adds no new
words is left alone. Matching is on lower-cased word tokens, so "Einstein's" matches "Einstein".
"""

from __future__ import annotations

import re
from collections.abc import Sequence

MIN_COVERAGE = 0.6
MAX_CITED = 2
_WORD = re.compile(r"[^\W_]+", re.UNICODE)
_CITATION = re.compile(r"\[\d+\]")
_STOPWORDS_TEXT = """
a an the and or but if of to in on at by for with from as into onto over under about than then that this these those
is are was were be been being am do does did has have had having it its it's he she they them his her their we you
your our i me my mine not no nor so such too very can could should would will shall may might must also only just
which who whom whose what when where why how there here s t one
"""
STOPWORDS = frozenset(_STOPWORDS_TEXT.split())


def content_words(text: str) -> set[str]:
    return {w for w in _WORD.findall(_CITATION.sub(" ", text).lower()) if w not in STOPWORDS}


def cites(text: str) -> bool:
    return bool(_CITATION.search(text))


def attribute(reply: str, question: str, passages: Sequence[str]) -> list[int]:
    """1-based numbers of the passages that hold the reply's new words (empty when none qualifies)."""
    new = content_words(reply) - content_words(question)
    if not new or not passages:
        return []
    coverage = [len(new & content_words(p)) / len(new) for p in passages]
    best = max(coverage)
    if best < MIN_COVERAGE:
        return []
    return [i + 1 for i, c in enumerate(coverage) if c == best][:MAX_CITED]


def citation_suffix(numbers: Sequence[int]) -> str:
    """``"[1][3]"``, as Wikipedia places references: right after the sentence."""
    return "".join(f"[{n}]" for n in numbers)
