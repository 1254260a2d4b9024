"""Property tests: arbitrary input to the CSV, JSONL and TOML readers and the sampler settings gives a result or an
AsymmetryError, nothing else (no other exception, no half-valid object)."""

from __future__ import annotations

import dataclasses
import json
import math
import tempfile
import tomllib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asymmetry.config import Config
from asymmetry.datasets import read_qa_jsonl
from asymmetry.errors import AsymmetryError
from asymmetry.eval.mcfile import read_mc_csv
from asymmetry.experts.data import load_training_file
from asymmetry.index.corpus import read_jsonl
from asymmetry.integrity import read_jsonl_log
from asymmetry.router.data import read_jsonl as read_router_jsonl
from asymmetry.sampling.config import SamplerConfig

# derandomized: the same examples on every run (a CI failure reproduces); explored further with 1,500 examples by hand
FAST = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow])

# values a TOML file or a JSON line can carry (and a few it cannot, as Python callers pass them)
scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**40), 2**40), st.floats(allow_nan=True),
                    st.text(max_size=12))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                      st.dictionaries(st.text(max_size=8), inner, max_size=3)),
                      max_leaves=6)


def _write(data: bytes, suffix: str) -> Path:
    fh = tempfile.NamedTemporaryFile(delete=False, suffix=suffix)  # noqa: SIM115 -- closed at once, read by path
    fh.write(data)
    fh.close()
    return Path(fh.name)


CSV_PIECES = st.lists(st.sampled_from(["prompt", "A", "B", "C", "answer", "id", ",", "\n", '"', "x", "é", "\r\n",
                                       " ", "B", "\x00", "\ufeff"]), max_size=40).map("".join)


@FAST
@given(text=CSV_PIECES, encoding=st.sampled_from(["utf-8", "latin-1", "utf-16"]))
def test_csv_reader_gives_rows_or_a_clear_error(text, encoding):
    path = _write(text.encode(encoding, errors="replace"), ".csv")
    try:
        rows = read_mc_csv(path)
    except AsymmetryError:
        return
    finally:
        path.unlink()
    for row in rows:
        assert row.prompt and row.options and (row.answer is None or row.answer in row.options)
    assert len({r.id for r in rows}) == len(rows)


@FAST
@given(lines=st.lists(st.one_of(values.map(json.dumps), st.text(max_size=20),
                                st.just('{"title": "T", "text": "some words"}')), max_size=6),
       garbage=st.binary(max_size=8))
def test_jsonl_corpus_reader_gives_articles_or_a_clear_error(lines, garbage):
    path = _write(("\n".join(lines)).encode("utf-8") + garbage, ".jsonl")
    try:
        articles = list(read_jsonl(path))
    except AsymmetryError:
        return
    finally:
        path.unlink()
    assert all(a.title.strip() and a.text.strip() for a in articles)


@FAST
@given(data=st.binary(max_size=200))
def test_log_repair_leaves_a_log_that_reads_back_the_same(data):
    path = _write(data, ".jsonl")
    try:
        first = read_jsonl_log(path, lambda r: isinstance(r, dict), lambda n: AsymmetryError(f"line {n}"))
    except AsymmetryError:
        assert path.read_bytes() == data  # a damaged log is left alone
        path.unlink()
        return
    repaired = path.read_bytes()
    assert repaired == b"" or repaired.endswith(b"\n") or not repaired.strip()
    assert read_jsonl_log(path, lambda r: isinstance(r, dict), lambda n: AsymmetryError("x")) == first
    path.unlink()


JSONL_LINES = st.lists(st.one_of(values.map(json.dumps), st.text(max_size=20),
                                 st.just('{"question": "Who?", "answers": ["x"], "expert": "science"}'),
                                 st.just('{"messages": [{"role": "user", "content": "q"}, '
                                         '{"role": "assistant", "content": "a"}]}')), max_size=6)


@FAST
@given(lines=JSONL_LINES, garbage=st.binary(max_size=6))
def test_the_other_jsonl_readers_give_records_or_a_clear_error(lines, garbage):
    """QA sets (eval qa), router data (router train --data) and training data (expert train --data)."""
    path = _write(("\n".join(lines)).encode("utf-8") + garbage, ".jsonl")
    try:
        for reader in (read_qa_jsonl, read_router_jsonl, load_training_file):
            try:
                reader(path)
            except AsymmetryError:
                pass
    finally:
        path.unlink()


SECTIONS = {f.name: [g.name for g in dataclasses.fields(f.type if not isinstance(f.type, str) else
                                                         type(getattr(Config(), f.name)))]
            for f in dataclasses.fields(Config)}


@FAST
@given(data=st.data())
def test_toml_sections_give_a_config_or_a_clear_error(data):
    section = data.draw(st.sampled_from(sorted(SECTIONS)))
    keys = data.draw(st.lists(st.sampled_from([*SECTIONS[section], "unknown_key"]), max_size=3, unique=True))
    table = {k: data.draw(values) for k in keys}
    try:
        cfg = Config.from_dict({section: table})
    except AsymmetryError:
        return
    for name, value in dataclasses.asdict(getattr(cfg, section)).items():
        if isinstance(value, float):
            assert math.isfinite(value), (section, name, value)


@FAST
@given(text=st.lists(st.sampled_from([*"[]=\"'.\n _19-+{},", "nan", "inf", "true", "sampler", "top_p", "eval",
                                       "cfg_scale", "index", "shard_size", "\xff"]), max_size=30).map("".join))
def test_toml_files_give_a_config_or_a_clear_error(text):
    path = _write(text.encode("utf-8") + (b"\n# caf\xe9\n" if "nan" in text else b""), ".toml")  # some latin-1
    try:
        Config.load(path)
    except AsymmetryError:
        pass
    finally:
        path.unlink()


SAMPLER_NUMBERS = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-5, 300), st.booleans(),
                            st.none(), st.text(max_size=3))


@FAST
@given(changes=st.dictionaries(st.sampled_from(SamplerConfig.field_names()), SAMPLER_NUMBERS, max_size=4))
def test_sampler_settings_give_a_config_or_a_clear_error(changes):
    try:
        cfg = SamplerConfig(**changes)
    except AsymmetryError:
        return
    for name in SamplerConfig.field_names():
        value = getattr(cfg, name)
        if isinstance(value, float):
            assert math.isfinite(value), (name, value)


def test_toml_nan_literals_are_what_the_properties_feed():
    assert math.isnan(tomllib.loads("x = nan")["x"])  # TOML itself carries nan and inf: the configs must refuse them
    with pytest.raises(AsymmetryError):
        Config.from_dict({"eval": {"cfg_scale": float("nan")}})
