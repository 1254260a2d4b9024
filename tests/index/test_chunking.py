from __future__ import annotations

import itertools

import pytest

from asymmetry.errors import ConfigError
from asymmetry.index.chunking import ChunkingConfig, chunk_article, split_sentences
from asymmetry.index.corpus import Article, open_corpus


def test_split_sentences_respects_abbreviations_and_quotes():
    text = 'Dr. Smith met J. R. R. Tolkien in 1950. He said "Hello." Then e.g. cats left! 3 dogs came.'
    assert split_sentences(text) == ["Dr. Smith met J. R. R. Tolkien in 1950.", 'He said "Hello."',
                                     "Then e.g. cats left!", "3 dogs came."]


def test_long_articles_become_overlapping_passages_of_100_to_200_words():
    arts = [a for a in open_corpus("default") if len(a.text.split()) > 300][:20]
    assert arts
    cfg = ChunkingConfig()
    for art in arts:
        chunks = chunk_article(art, cfg)
        assert len(chunks) >= 2
        sentences = set(split_sentences(art.text))
        for i, c in enumerate(chunks):
            n = len(c.text.split())
            assert n <= cfg.max_words
            if i < len(chunks) - 1:
                assert n >= cfg.min_words
            assert c.indexed_text == f"{art.title}\n{c.text}"
            assert c.metadata["chunk"] == i and c.metadata["topic"] == art.metadata["topic"]
            first = split_sentences(c.text)[0]
            assert first in sentences  # passages start at a sentence boundary
        for a, b in itertools.pairwise(chunks):
            last = split_sentences(a.text)[-1]
            if len(last.split()) <= cfg.overlap_words:
                assert b.text.startswith(last)  # overlap: the next passage repeats the last sentence


def test_short_article_is_one_passage_and_every_word_is_kept():
    art = Article("Tiny", "One sentence here. Another one there.", "u", {"topic": "x"})
    (chunk,) = chunk_article(art)
    assert chunk.text == art.text and chunk.title == "Tiny" and chunk.url == "u"


def test_sentence_longer_than_max_is_split():
    art = Article("Run-on", " ".join(["word"] * 450) + ".", "", {})
    chunks = chunk_article(art, ChunkingConfig(target_words=150, max_words=200, min_words=100, overlap_words=0))
    assert [len(c.text.split()) for c in chunks] == [200, 200, 50]


def test_bad_chunking_config():
    with pytest.raises(ConfigError, match="chunk"):
        ChunkingConfig(target_words=300, max_words=200)
    with pytest.raises(ConfigError, match="overlap"):
        ChunkingConfig(overlap_words=150)
