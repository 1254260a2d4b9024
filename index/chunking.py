"""Sentence-aware chunking of articles into passages of about 100-200 words with overlap.

Sentences are never cut unless one alone exceeds ``max_words``. A passage ends once it holds ``target_words``;
the next starts with the last sentences of the previous one (up to ``overlap_words``). The article title is
prepended to the text that is embedded and indexed lexically (:attr:`Chunk.indexed_text`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from asymmetry.errors import ConfigError
from asymmetry.index.corpus import Article

# A sentence ends at . ! ? (optionally followed by a closing quote/bracket) and whitespace before an upper-case
# letter, a digit or an opening quote; common abbreviations and initials do not end a sentence.
_ABBREV = "".join(rf"(?<!\b{a}\.)" for a in ("[A-Z]", "Mr", "Mrs", "Ms", "Dr", "St", "vs", "e\\.g", "i\\.e", "c", "ca", "No"))
_SENTENCE_END = re.compile(r"(?:" + _ABBREV + r"""(?<=[.!?])|(?<=[.!?]["')\]]))\s+(?=["'(\[]?[A-Z0-9])""")


def split_sentences(text: str) -> list[str]:
    """Split a paragraph into sentences (a rule-based splitter: fast and good enough for Wikipedia prose)."""
    out = []
    for para in re.split(r"\n\s*\n|\n", text):
        para = para.strip()
        if not para:
            continue
        out.extend(s.strip() for s in _SENTENCE_END.split(para) if s.strip())
    return out


@dataclass
class Chunk:
    title: str
    text: str
    url: str
    metadata: dict = field(default_factory=dict)

    @property
    def indexed_text(self) -> str:
        """What is embedded and indexed lexically: the title, then the passage."""
        return f"{self.title}\n{self.text}"


@dataclass(frozen=True)
class ChunkingConfig:
    target_words: int = 150
    max_words: int = 200
    min_words: int = 100
    overlap_words: int = 30

    def __post_init__(self):
        if not 0 < self.min_words <= self.target_words <= self.max_words:
            raise ConfigError("index.chunk_min/target/max_words", (self.min_words, self.target_words, self.max_words),
                              "need 0 < min_words <= target_words <= max_words, e.g. 100, 150, 200")
        if not 0 <= self.overlap_words < self.min_words:
            raise ConfigError("index.chunk_overlap_words", self.overlap_words, "use 0 <= overlap_words < min_words, e.g. 30")


def _words(s: str) -> int:
    return len(s.split())


def _split_long(sentence: str, max_words: int) -> list[str]:
    words = sentence.split()
    return [" ".join(words[i : i + max_words]) for i in range(0, len(words), max_words)]


def chunk_article(article: Article, config: ChunkingConfig = ChunkingConfig()) -> list[Chunk]:
    sentences: list[str] = []
    for s in split_sentences(article.text):
        sentences.extend(_split_long(s, config.max_words) if _words(s) > config.max_words else [s])
    if not sentences:
        return []
    groups: list[list[str]] = []
    current: list[str] = []
    count = 0
    fresh = 0  # words in `current` that are not overlap from the previous passage
    for s in sentences:
        n = _words(s)
        if current and count + n > config.max_words:
            groups.append(current)
            current, count = _overlap(current, config.overlap_words), 0
            count = sum(map(_words, current))
            fresh = 0
        current.append(s)
        count += n
        fresh += n
        if count >= config.target_words:
            groups.append(current)
            current = _overlap(current, config.overlap_words)
            count = sum(map(_words, current))
            fresh = 0
    if fresh:
        if groups and count < config.min_words and sum(map(_words, groups[-1])) + fresh <= config.max_words:
            tail = current[len(_overlap(groups[-1], config.overlap_words)) :]
            groups[-1] = groups[-1] + tail
        else:
            groups.append(current)
    return [
        Chunk(title=article.title, text=" ".join(g), url=article.url, metadata={**article.metadata, "chunk": i})
        for i, g in enumerate(groups)
    ]


def _overlap(sentences: list[str], overlap_words: int) -> list[str]:
    """The last sentences of a passage that fit in ``overlap_words`` (at least none, never the whole passage)."""
    out: list[str] = []
    total = 0
    for s in reversed(sentences[1:]):
        total += _words(s)
        if total > overlap_words:
            break
        out.insert(0, s)
    return out


def chunk_articles(articles: Iterable[Article], config: ChunkingConfig = ChunkingConfig()) -> Iterator[Chunk]:
    for article in articles:
        yield from chunk_article(article, config)
