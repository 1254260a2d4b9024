from __future__ import annotations

import json

import numpy as np
import pytest

from asymmetry.datasets import MC_DATASETS, OPEN_DATASETS
from asymmetry.embedder import Embedder, embedding_model_path
from asymmetry.errors import AsymmetryError
from asymmetry.router.data import (
    PARTS,
    EmbeddingCache,
    _split_source,
    builtin_examples,
    load_mapping,
    read_jsonl,
    source_parts,
)


def test_shipped_mapping_covers_every_dataset_once():
    mapping = load_mapping()
    assert set(mapping) == {"science", "commonsense", "scholar"}
    mapped = [d for sets in mapping.values() for d in sets]
    assert sorted(mapped) == sorted([*MC_DATASETS, *OPEN_DATASETS])
    assert "sciq" in mapping["science"] and "piqa" in mapping["commonsense"] and "trivia_qa" in mapping["scholar"]


def test_splits_are_disjoint_deterministic_and_never_test(small_examples):
    again = builtin_examples(caps={"train": 20, "calibration": 10, "heldout": 10})
    assert again == small_examples
    ids = {part: {(e.source, e.id) for e in small_examples[part]} for part in PARTS}
    texts = {part: {e.text for e in small_examples[part]} for part in PARTS}
    assert not ids["train"] & ids["heldout"] and not ids["train"] & ids["calibration"]
    assert not ids["calibration"] & ids["heldout"]
    assert not texts["train"] & texts["heldout"]
    for part in PARTS:
        assert all("-test-" not in e.id for e in small_examples[part])
        sources = {e.source for e in small_examples[part]}
        assert len(sources) == 11, part  # every mapped dataset contributes to every part
    # the validation-only sets are split three ways
    for source in ("sciq", "nq_open", "trivia_qa", "mmlu"):
        assert all(any(e.source == source for e in small_examples[p]) for p in PARTS)
    assert not any(e.text.startswith("Goal:") for p in PARTS for e in small_examples[p])


def test_caps_take_a_prefix_so_small_runs_reuse_the_cache(small_examples):
    bigger = builtin_examples(caps={"train": 30, "calibration": 10, "heldout": 10})
    for source in ("arc_easy", "nq_open"):
        small = [e.id for e in small_examples["train"] if e.source == source]
        big = [e.id for e in bigger["train"] if e.source == source]
        assert len(small) == 20 and big[:20] == small


def test_bad_mapping_files_name_the_problem(tmp_path):
    bad = tmp_path / "m.toml"
    bad.write_text('[experts]\nscience = ["arc_easy", "not_a_set"]\n')
    with pytest.raises(AsymmetryError, match="not_a_set"):
        load_mapping(bad)
    bad.write_text('[experts]\nscience = ["arc_easy"]\nother = ["arc_easy"]\n')
    with pytest.raises(AsymmetryError, match="both"):
        load_mapping(bad)
    bad.write_text("[experts\n")
    with pytest.raises(AsymmetryError, match="not valid TOML"):
        load_mapping(bad)
    with pytest.raises(AsymmetryError, match="does not exist"):
        load_mapping(tmp_path / "missing.toml")


def test_jsonl_reader_splits_and_reports_bad_lines(tmp_path):
    f = tmp_path / "mine.jsonl"
    rows = [{"question": f"What does statute {i} say about contracts?", "expert": "law"} for i in range(50)]
    rows.append({"question": "Is a verbal contract binding?", "expert": "law", "split": "heldout"})
    f.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    parts = read_jsonl(f)
    assert sum(len(v) for v in parts.values()) == 51
    assert any(e.text == "Is a verbal contract binding?" for e in parts["heldout"])
    assert len(parts["train"]) > len(parts["heldout"]) and all(e.label == "law" for p in PARTS for e in parts[p])

    cases = [
        ('{"question": "x", "expert": "law"}\n{not json}\n', "mine.jsonl:2.*not valid JSON"),
        ('{"question": "", "expert": "law"}\n', "mine.jsonl:1.*'question'"),
        ('{"question": "Why?", "expert": "bad name!"}\n', "'expert'"),
        ('{"question": "Why?", "expert": "law", "split": "test"}\n', "'split'.*'test'"),
        ('["a list"]\n', "JSON object"),
        ("\n", "no questions"),
    ]
    for text, pattern in cases:
        f.write_text(text)
        with pytest.raises(AsymmetryError, match=pattern):
            read_jsonl(f)
    with pytest.raises(AsymmetryError, match="does not exist"):
        read_jsonl(tmp_path / "nope.jsonl")


def test_embedding_cache_reuses_and_repairs_its_files(small_examples, tmp_path, embedder):
    rows = small_examples["heldout"][:3]
    cache = EmbeddingCache(root=tmp_path, embedder=embedder)
    assert cache.model_name == "all-MiniLM-L6-v2"
    first = cache.vectors(rows, progress=False)  # (3, 384)
    np.testing.assert_allclose(first, embedder.encode([e.text for e in rows]), atol=1e-5)
    files = list(tmp_path.glob("*.npz"))
    assert len(files) == 1 and not list(tmp_path.glob(".*"))  # no temp file left behind
    stamp = files[0].stat().st_mtime_ns
    np.testing.assert_array_equal(cache.vectors(rows, progress=False), first)
    assert files[0].stat().st_mtime_ns == stamp  # served from the cache, nothing rewritten
    files[0].write_bytes(b"not an npz file")
    np.testing.assert_allclose(cache.vectors(rows, progress=False), first, atol=1e-5)
    with np.load(files[0]) as z:
        assert z["vectors"].shape == (3, 384)
    with pytest.raises(AsymmetryError, match="no questions"):
        cache.vectors([])
    other = tmp_path / "my-minilm"
    other.symlink_to(embedding_model_path(), target_is_directory=True)
    with pytest.raises(AsymmetryError, match="not the embedding model"):
        EmbeddingCache(str(other), root=tmp_path, embedder=embedder)
    assert EmbeddingCache(root=tmp_path, embedder=Embedder(str(other))).model_name == str(other.resolve())


def test_question_cache_is_written_once_and_rebuilt_when_corrupt(monkeypatch, tmp_path):
    monkeypatch.setenv("ASYMMETRY_HOME", str(tmp_path))
    parts = source_parts("arc_challenge")
    cached = tmp_path / "router" / "questions" / "arc_challenge.json"
    assert cached.is_file() and source_parts("arc_challenge") == parts == _split_source("arc_challenge")
    assert len(parts["train"]) == 1119 and len(parts["calibration"]) + len(parts["heldout"]) <= 299
    cached.write_text("{broken")
    assert source_parts("arc_challenge") == parts
    assert json.loads(cached.read_text())["key"]["source"] == "arc_challenge"
