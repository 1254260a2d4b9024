from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from asymmetry.cli import main
from asymmetry.config import Config
from asymmetry.embedder import embedding_model_path
from asymmetry.errors import AsymmetryError, ConfigError
from asymmetry.index.chunking import split_sentences
from asymmetry.index.store import PassageStore
from asymmetry.retrieval import Passage, RetrievalConfig, Retriever, reciprocal_rank_fusion, remove_near_duplicates


@pytest.fixture(scope="module")
def retriever(small_index, embedder):
    """The first stage (dense, lexical, fusion, near-duplicates) alone; reranking is tested in test_rerank.py."""
    return Retriever.open(small_index, config=RetrievalConfig(rerank=False), embedder=embedder)


@pytest.fixture(scope="module")
def store(small_index):
    return PassageStore(small_index / "passages.sqlite")


def _middle_sentence(text: str) -> str:
    sentences = [s for s in split_sentences(text) if len(s.split()) >= 8]
    return sentences[len(sentences) // 2]


@pytest.mark.parametrize("mode", ["dense", "lexical", "hybrid"])
def test_a_sentence_finds_its_own_passage(retriever, store, mode):
    hits = 0
    ids = list(range(0, len(store), 7))
    for pid in ids:
        (p,) = store.get([pid])
        found = retriever.search(_middle_sentence(p.text), k=5, mode=mode)
        assert 1 <= len(found) <= 5
        assert all(isinstance(f, Passage) and f.title and f.text and f.url is not None for f in found)
        assert [f.score for f in found] == sorted((f.score for f in found), reverse=True)
        hits += found[0].id == pid or (found[0].text == p.text)  # (the mirrored duplicate counts as found)
    assert hits >= 0.8 * len(ids)


def test_hybrid_fuses_both_rankings(retriever):
    found = retriever.search("Which awards honour achievements in cinema?", k=5, mode="hybrid")
    assert any(f.metadata["dense_rank"] for f in found) and any(f.metadata["lexical_rank"] for f in found)
    for f in found:
        ranks = [r for r in (f.metadata["dense_rank"], f.metadata["lexical_rank"]) if r]
        assert f.score == pytest.approx(sum(1 / (60 + r) for r in ranks))
    assert "Academy Awards" in [f.title for f in found]


def test_shared_query_embedding_gives_the_same_result(retriever, embedder):
    q = "the theory of evolution by natural selection"
    assert retriever.embedder is embedder
    vec = embedder.encode([q])[0]  # (D,)
    a = retriever.search(q, k=4, mode="dense")
    b = retriever.search(q, k=4, mode="dense", query_embedding=vec)
    c = retriever.search(q, k=4, mode="dense", query_embedding=vec.reshape(1, -1))
    assert [p.id for p in a] == [p.id for p in b] == [p.id for p in c]
    with pytest.raises(AsymmetryError, match="dimension 10"):
        retriever.search(q, query_embedding=np.zeros(10, dtype=np.float32))


def test_near_duplicates_are_removed(retriever, store, small_corpus, embedder):
    rows = [json.loads(line) for line in small_corpus.read_text().splitlines()]
    mirror = rows[-1]
    assert mirror["title"].endswith("(mirror)")
    found = retriever.search(_middle_sentence(mirror["text"]), k=5, mode="hybrid")
    texts = [f.text for f in found]
    assert texts.count(texts[0]) == 1 and texts[0] in mirror["text"]
    raw = retriever.dense_ids(embedder.encode([_middle_sentence(mirror["text"])])[0], 5)
    assert len({store.get([i])[0].text for i, _ in raw[:2]}) == 1  # the index does hold both copies


def test_rrf_and_dedup_helpers():
    fused = reciprocal_rank_fusion([[1, 2, 3], [3, 1]], k=60)
    assert [pid for pid, _ in fused] == [1, 3, 2]
    assert fused[0][1] == pytest.approx(1 / 61 + 1 / 62)
    a = Passage(1, "A", "the quick brown fox jumps over the lazy dog today", "", 1.0)
    b = Passage(2, "B", "The quick brown fox jumps over the lazy dog today!", "", 0.9)
    c = Passage(3, "C", "an entirely different passage about something else", "", 0.8)
    assert [p.id for p in remove_near_duplicates([a, b, c])] == [1, 3]
    assert [p.id for p in remove_near_duplicates([a, b, c], threshold=1.0)] == [1, 2, 3]


def test_bad_arguments(retriever):
    with pytest.raises(AsymmetryError, match="empty"):
        retriever.search("  ")
    with pytest.raises(AsymmetryError, match="k=0"):
        retriever.search("x", k=0)
    with pytest.raises(AsymmetryError, match="mode='fuzzy'"):
        retriever.search("x", mode="fuzzy")
    assert retriever.search("zzqxv", mode="lexical") == []


def test_missing_index_dir_is_an_error_not_a_build(tmp_path):
    with pytest.raises(AsymmetryError, match="no complete index.*asymmetry index build --index-dir.*ensure_index"):
        Retriever.open(tmp_path / "none")
    assert not (tmp_path / "none").exists()


def test_a_retriever_without_an_embedder_makes_one_of_the_index_model(small_index):
    r = Retriever.open(small_index, config=RetrievalConfig(verify_checksums=False))
    assert r.embedder.name == r.manifest.embedding_model == "all-MiniLM-L6-v2"


def test_damaged_index_file_is_reported_and_kept(small_index, tmp_path):
    root = tmp_path / "idx"
    shutil.copytree(small_index, root, ignore=shutil.ignore_patterns(".build"))
    data = bytearray((root / "index.faiss").read_bytes())
    data[100:140] = bytes(40)
    (root / "index.faiss").write_bytes(bytes(data))
    with pytest.raises(AsymmetryError, match=r"index\.faiss does not match its checksum.*--rebuild"):
        Retriever.open(root)
    (root / "index.faiss").write_bytes(bytes(data[:5000]))
    with pytest.raises(AsymmetryError, match=r"index\.faiss has 5000 bytes.*--rebuild"):
        Retriever.open(root, config=RetrievalConfig(verify_checksums=False))
    assert (root / "manifest.json").is_file() and (root / "passages.sqlite").is_file()  # nothing deleted


def test_index_built_with_another_embedding_model(small_index, tmp_path):
    other = tmp_path / "my-minilm"
    shutil.copytree(embedding_model_path(), other)  # a user's own local model folder
    cfg = Config.from_dict({"index": {"embedding_model": str(other)}})
    with pytest.raises(AsymmetryError, match="built with the embedding model 'all-MiniLM-L6-v2'.*--rebuild"):
        Retriever.open(small_index, config=cfg)
    assert Retriever.open(small_index, config=Config()).manifest.passage_count > 0


def test_search_cli_json_and_text(small_index, capsys, tmp_path):
    assert main(["search", "Academy Awards for film", "-k", "3", "--index-dir", str(small_index), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)  # reranked by default: passages below rerank_min_score are dropped
    assert 1 <= len(out) <= 3 and {"title", "text", "score", "url"} <= set(out[0])
    assert out[0]["title"] == "Academy Awards" and "fused_score" in out[0]["metadata"]
    assert [o["score"] for o in out] == sorted((o["score"] for o in out), reverse=True)
    cfg = tmp_path / "asymmetry.toml"
    cfg.write_text("[retrieval]\nrerank = false\n")
    assert main(["--config", str(cfg), "search", "Academy Awards for film", "-k", "2", "--index-dir",
                 str(small_index)]) == 0
    text = capsys.readouterr().out
    assert text.startswith("[1] ") and "score" in text and "[2] " in text
    assert main(["search", "x", "-k", "0", "--index-dir", str(small_index)]) == 2


def test_config_validation():
    with pytest.raises(ConfigError, match="retrieval.dedup_threshold"):
        RetrievalConfig(dedup_threshold=0)
    with pytest.raises(ConfigError, match="retrieval.mode"):
        Config.from_dict({"retrieval": {"mode": "sparse"}})
