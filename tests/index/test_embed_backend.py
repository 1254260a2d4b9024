"""index.embed_backend = "onnx-int8": a real build on the small corpus agrees with the torch one, and an index is
only ever searched with query vectors of its own backend."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from asymmetry.cli import main
from asymmetry.config import Config
from asymmetry.embedder import Embedder
from asymmetry.engine import Engine
from asymmetry.errors import AsymmetryError, ConfigError
from asymmetry.index import IndexConfig, build_index
from asymmetry.index.chunking import chunk_articles
from asymmetry.index.corpus import open_corpus
from asymmetry.index.distributed import EmbedWorker
from asymmetry.index.manifest import embed_backend, load_manifest, rebuild_command
from asymmetry.index.prebuilt import default_table
from asymmetry.index.shards import embed_passages
from asymmetry.retrieval import RetrievalConfig, Retriever

QUERIES = 12  # questions about the small corpus's articles


@pytest.fixture(scope="module")
def int8_embedder():
    return Embedder(backend="onnx-int8")


@pytest.fixture(scope="module")
def int8_index(small_corpus, small_index, tmp_path_factory):
    """The small corpus built through the CLI flag, with the same shards as the torch small_index."""
    root = tmp_path_factory.mktemp("int8") / "index"
    assert main(["index", "build", "--corpus", str(small_corpus), "--index-dir", str(root), "--index-type", "flat",
                 "--shard-size", "32", "--embed-backend", "onnx-int8", "--no-progress"]) == 0
    return root


def _vectors(root):
    index = faiss.read_index(str(root / "index.faiss"))
    return index.reconstruct_n(0, index.ntotal)  # (N, D)


def test_int8_build_vectors_agree_with_torch(int8_index, small_index):
    m = load_manifest(int8_index)
    assert embed_backend(m) == "onnx-int8" and embed_backend(load_manifest(small_index)) == "torch"
    assert m.embedding_model == "all-MiniLM-L6-v2" and "--embed-backend onnx-int8" in rebuild_command(int8_index, m)
    int8, torch_ = _vectors(int8_index), _vectors(small_index)  # (N, D) each, the same passages in the same order
    assert int8.shape == torch_.shape
    cosine = (int8 * torch_).sum(axis=1)
    assert cosine.min() > 0.98 and cosine.mean() > 0.99  # measured: min 0.991, mean 0.995 on 256 default passages
    assert np.abs(int8 - torch_).max() < 0.06
    assert np.allclose(np.linalg.norm(int8, axis=1), 1.0, atol=1e-4)


def test_int8_index_gives_the_same_top_k(int8_index, small_index, small_corpus, int8_embedder, embedder):
    titles = list(dict.fromkeys(c.title for c in chunk_articles(open_corpus(small_corpus))))
    questions = [f"What is {t} known for?" for t in titles[::5][:QUERIES]]
    config = RetrievalConfig(verify_checksums=False, rerank=False)
    ours = Retriever.open(int8_index, config=config, embedder=int8_embedder)
    theirs = Retriever.open(small_index, config=config, embedder=embedder)
    shared = 0
    # passages are compared by text: the corpus holds an exact duplicate under another title, and search keeps one
    # of two equal texts; int8 vectors depend slightly on the shard a text was embedded with, so the copy kept may
    # differ between the two indexes
    for q in questions:  # the same first passage; passages may swap only at a near tie around the fifth place
        mine, reference = ours.search(q, k=5, mode="dense"), theirs.search(q, k=5, mode="dense")
        assert mine[0].text == reference[0].text
        deep = {p.text: p.score for p in theirs.search(q, k=20, mode="dense")}  # float scores past the top 5
        mine_texts, reference_texts = {p.text for p in mine}, {r.text for r in reference}
        common = [p for p in mine if p.text in reference_texts]
        assert len(common) >= 3 and max(abs(p.score - deep[p.text]) for p in common) < 0.04
        for p in mine:  # a passage only int8 ranks in the top 5 was within the tolerance of the float fifth
            assert p.text in deep and deep[p.text] > reference[-1].score - 0.04, (q, p.title)
        for r in reference:  # and one it dropped was within the tolerance of the int8 fifth
            assert r.text in mine_texts or r.score < mine[-1].score + 0.04, (q, r.title)
        shared += len(common)
    # measured: 55 of 60 on an AVX512-VNNI machine, 53 of 60 on an AVX2-only one (its int8 kernels round
    # differently); every swap there was among scores within 0.02 of each other
    assert shared >= 0.85 * 5 * len(questions)


def test_a_backend_mismatch_is_an_error(int8_index, small_index, int8_embedder, embedder, small_corpus):
    with pytest.raises(AsymmetryError, match="'onnx-int8' backend but the embedder passed .* 'torch'.*--embed-backend torch"):
        Retriever.open(int8_index, embedder=embedder)
    with pytest.raises(AsymmetryError, match="'torch' backend but the config's index.embed_backend is 'onnx-int8'"):
        Retriever.open(small_index, config=Config(index=IndexConfig(embed_backend="onnx-int8")))
    with pytest.raises(AsymmetryError, match="index.embed_backend = \"onnx-int8\""):
        Retriever.open(int8_index, config=Config())
    Retriever.open(int8_index, config=Config(index=IndexConfig(embed_backend="onnx-int8"))).close()
    assert Retriever.open(int8_index).embedder.backend == "onnx-int8"  # its own query embedder matches the index
    with pytest.raises(AsymmetryError, match="runs the 'torch' backend but embed_backend asks for 'onnx-int8'"):
        build_index(str(small_corpus), int8_index, embedder=embedder, embed_backend="onnx-int8")
    with pytest.raises(AsymmetryError, match="differs from this build"):  # a torch build over the int8 index
        build_index(str(small_corpus), int8_index, index_type="flat", shard_size=32, embedder=embedder, progress=False)
    with pytest.raises(ConfigError, match="index.embed_backend"):
        IndexConfig(embed_backend="tensorrt")


def test_shipped_torch_vectors_are_not_mixed_into_an_int8_build(int8_embedder, embedder):
    table = default_table()
    assert table is not None and table.matches(embedder) and not table.matches(int8_embedder)


def test_ray_worker_embeds_with_the_build_backend(small_corpus, int8_embedder):
    texts = [c.indexed_text for c in chunk_articles(open_corpus(small_corpus))][:8]
    worker = EmbedWorker("jsonl", "all-MiniLM-L6-v2", 4, {}, "onnx-int8")  # the actor's class, run in-process
    vectors, reused = worker.embed(texts)
    assert worker.embedder.backend == "onnx-int8" and reused == 0
    # dynamic int8 quantizes activations per batch: the same batches as a local build of batch size 4 give the same
    # vectors (other batches move them by up to ~0.03, as far as torch's are)
    np.testing.assert_allclose(vectors, embed_passages(texts, int8_embedder, 4), atol=1e-5)


def test_ray_int8_build_equals_the_local_int8_build(ray_cluster, small_corpus, int8_index, int8_embedder, tmp_path):
    out = tmp_path / "ray-int8"
    m = build_index(str(small_corpus), out, index_type="flat", shard_size=32, progress=False, embedder=int8_embedder,
                    ray=True, ray_workers=2)
    assert embed_backend(m) == "onnx-int8" and m.build == load_manifest(int8_index).build
    np.testing.assert_allclose(_vectors(out), _vectors(int8_index), atol=1e-5)  # the same batches, the same vectors


def test_the_engine_routes_on_torch_vectors_and_searches_an_int8_index_with_int8_ones(int8_index, pool):
    config = Config(index=IndexConfig(index_dir=str(int8_index), embed_backend="onnx-int8"),
                    retrieval=RetrievalConfig(rerank=False))
    engine = Engine(config, pool=pool)
    assert engine.embedder.backend == "torch"  # the router's (trained on torch vectors)
    assert engine.retriever.embedder.backend == "onnx-int8" and not engine._shared_query_embedding()
    assert Engine(Config(), pool=pool)._shared_query_embedding()
