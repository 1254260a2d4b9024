"""Shared fixtures. Tests run offline on the embedded defaults; models are converted once into ASYMMETRY_HOME."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import itertools
import json

import pytest

from asymmetry import defaults


@pytest.fixture(scope="session")
def pool():
    """One model pool for the whole session: every base loads once per placement, adapters attach once."""
    from asymmetry.experts import ModelPool

    return ModelPool()


@pytest.fixture(scope="session")
def smollm(pool):
    """The embedded default base model (SmolLM2-135M-Instruct, fp32) from the session's pool. Adapters other tests
    attach to it do not change it: a forward that names no adapter runs the bare base."""
    return pool.base("smollm2")


# -- a small corpus (a slice of the default corpus) and its flat index, cached in the home (index and retrieval tests)


def small_corpus_path():
    """60 default-corpus leads, 2 long articles (several passages each) and one exact duplicate under another title."""
    from asymmetry.index.corpus import open_corpus

    arts = list(itertools.islice(open_corpus("default"), 60))
    long_ones = [a for a in open_corpus("default") if len(a.text.split()) > 280][:2]
    rows = [{"title": a.title, "text": a.text, "url": a.url, "metadata": a.metadata} for a in arts + long_ones]
    rows.append({**rows[3], "title": rows[3]["title"] + " (mirror)", "url": ""})
    path = defaults.home() / "test-data" / "small-corpus.jsonl"
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    if not path.is_file() or path.read_text(encoding="utf-8") != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def small_corpus():
    return small_corpus_path()


@pytest.fixture(scope="session")
def small_index(small_corpus):
    """A flat index over the small corpus (built once; later sessions find it up to date)."""
    from asymmetry.errors import AsymmetryError
    from asymmetry.index.build import build_index

    root = defaults.home() / "test-data" / "small-index"
    try:
        build_index(str(small_corpus), root, index_type="flat", shard_size=32, progress=False)
    except AsymmetryError:  # left behind with other settings by an earlier version: replace it
        build_index(str(small_corpus), root, index_type="flat", shard_size=32, progress=False, rebuild=True)
    return root


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def embedder():
    """The embedded all-MiniLM-L6-v2, one instance (loaded on first use) shared by the whole session."""
    from asymmetry.embedder import Embedder

    return Embedder()


@pytest.fixture(scope="session")
def ray_cluster():
    """A real local Ray (2 CPUs, a small object store) for the --ray tests, shut down at the end of the session.
    Ray is part of the test extra, so a missing Ray fails these tests rather than skipping them."""
    from asymmetry.cluster import connect

    ray = connect(num_cpus=2, object_store_mb=256)
    yield ray
    ray.shutdown()
