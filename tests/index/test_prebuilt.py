"""The shipped default-corpus passage vectors (index/prebuilt.py): used only where they match, checked before use."""

from __future__ import annotations

import itertools
import logging

import numpy as np
import pytest

from asymmetry.index import build_index, prebuilt
from asymmetry.index.chunking import chunk_articles
from asymmetry.index.corpus import open_corpus
from asymmetry.index.prebuilt import DEFAULT_FILE, PrebuiltVectors, embed_with_prebuilt, write_table


def _texts(corpus, limit: int | None = None) -> list[str]:
    return [c.indexed_text for c in itertools.islice(chunk_articles(open_corpus(corpus)), limit)]


def test_the_shipped_table_covers_the_default_corpus_and_matches_the_default_embedder(embedder):
    table = PrebuiltVectors.load()
    assert table is not None, f"{DEFAULT_FILE} is missing from the package"
    assert table.matches(embedder) and table.meta["dimension"] == 384
    head = _texts("default", 2000)  # the first articles of the default corpus, as a build chunks them
    hits, vectors = table.lookup(head)
    assert len(hits) == len(set(head))  # every passage (a text that occurs twice has one row)
    fresh = embedder.encode([head[i] for i in hits[:16]])  # (16, D)
    np.testing.assert_allclose(vectors[:16], fresh, atol=2e-3)  # float16 storage of unit vectors


def test_a_build_takes_shipped_vectors_and_embeds_only_what_is_not_there(small_corpus, embedder):
    texts = _texts(small_corpus)
    embedded: list[str] = []

    def embed(batch):
        embedded.extend(batch)
        return embedder.encode(batch)

    vectors, reused = embed_with_prebuilt(texts, embedder, embed)
    assert len(embedded) >= 1 and reused == len(texts) - len(embedded)  # the "(mirror)" title is not shipped
    assert all("(mirror)" in t.split("\n")[0] for t in embedded)
    picks = [0, len(texts) // 2, texts.index(embedded[0]), len(texts) - 1]
    np.testing.assert_allclose(vectors[picks], embedder.encode([texts[i] for i in picks]), atol=2e-3)


def test_a_table_that_disagrees_with_the_embedder_is_not_used(tmp_path, monkeypatch, small_corpus, embedder, caplog):
    texts = _texts(small_corpus)[:12]
    rng = np.random.default_rng(0)
    wrong = rng.normal(size=(len(texts), 384)).astype(np.float32)
    wrong /= np.linalg.norm(wrong, axis=1, keepdims=True)
    path = tmp_path / "vectors.npz"
    write_table(path, texts, wrong, embedder, {"source": "test"})
    monkeypatch.setenv(prebuilt.ENV, str(path))
    with caplog.at_level(logging.WARNING):
        vectors, reused = embed_with_prebuilt(texts, embedder, embedder.encode)
    assert reused == 0 and "disagree" in caplog.text
    np.testing.assert_allclose(vectors, embedder.encode(texts), atol=1e-5)


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_a_damaged_table_is_ignored_with_a_warning(tmp_path, damage, caplog):
    path = tmp_path / "vectors.npz"
    data = DEFAULT_FILE.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"not a numpy file" * 100)
    with caplog.at_level(logging.WARNING):
        assert PrebuiltVectors.load(path) is None
    assert str(path) in caplog.text


def test_a_build_with_another_embedding_model_ignores_the_table(tmp_path, small_corpus, embedder, monkeypatch):
    """The table names its model and weights; an embedder of another model folder never takes its vectors."""
    table = PrebuiltVectors.load()
    fake = type("E", (), {"name": "/elsewhere/other-model", "path": embedder.path})()
    assert not table.matches(fake)
    monkeypatch.setitem(table.meta, "weights_sha256", "0" * 64)
    assert not table.matches(embedder)


def test_an_index_built_from_shipped_vectors_equals_one_embedded_here(tmp_path, small_corpus, small_index, monkeypatch):
    """The small index fixture takes shipped vectors; building without the table gives the same top passages."""
    import faiss

    monkeypatch.setenv(prebuilt.ENV, "none")
    root = tmp_path / "no-table"
    build_index(str(small_corpus), root, index_type="flat", shard_size=32, progress=False)
    a = faiss.read_index(str(small_index / "index.faiss"))
    b = faiss.read_index(str(root / "index.faiss"))
    queries = b.reconstruct_n(0, 20)  # (20, D)
    (score_a, ids_a), (score_b, ids_b) = a.search(queries, 5), b.search(queries, 5)  # (20, 5) each
    np.testing.assert_array_equal(ids_a[:, 0], ids_b[:, 0])
    np.testing.assert_allclose(score_a, score_b, atol=2e-3)  # the top-5 scores (ties may swap ids, not scores)
