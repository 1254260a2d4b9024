"""Free-form QA sets (``datasets.load_qa``): the fixed held-out rule, hash order, and the JSONL reader's errors."""

from __future__ import annotations

import json

import pytest

from asymmetry import datasets
from asymmetry.datasets import hash_bucket, load_qa, read_qa_jsonl
from asymmetry.errors import AsymmetryError
from asymmetry.router import data as router_data


@pytest.mark.parametrize(("name", "source"), [("nq_open", "nq_open"), ("triviaqa", "trivia_qa")])
def test_open_sets_hold_out_exactly_what_the_router_holds_out(name, source):
    held = load_qa(name)
    router_parts = router_data.source_parts(source)
    assert {q.id for q in held} == {i for i, _ in router_parts["heldout"]}
    seen_by_router = {i for part in ("train", "calibration") for i, _ in router_parts[part]}
    assert not seen_by_router & {q.id for q in held}
    tune, everything = load_qa(name, "tune"), load_qa(name, "all")
    assert {q.id for q in held} | {q.id for q in tune} == {q.id for q in everything}
    assert not {q.id for q in held} & {q.id for q in tune}
    assert len(everything) == len(datasets.load_open(source))
    assert all(q.source == source and q.answers for q in everything)


def test_trivia_qa_is_an_alias_and_squad_holds_out_half_by_hash():
    assert load_qa("trivia_qa") == load_qa("triviaqa")
    held, tune = load_qa("squad"), load_qa("squad", "tune")
    assert len(held) + len(tune) == 1000 and len(held) == 516
    assert all(hash_bucket(f"squad:{q.id}") >= 0.5 for q in held)
    assert all(hash_bucket(f"squad:{q.id}") < 0.5 for q in tune)
    assert held[0].question and held[0].answers


def test_named_sets_come_in_hash_order():
    held = load_qa("nq_open")
    keys = [hash_bucket(f"qa-order:nq_open:{q.id}") for q in held]
    assert keys == sorted(keys) and load_qa("nq_open") == held
    assert hash_bucket("nq_open:nq_open-0") == router_data._bucket("nq_open:nq_open-0")
    with pytest.raises(AsymmetryError, match="unknown part 'test'"):
        load_qa("nq_open", "test")


def _write(path, lines: list[str]) -> str:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def test_jsonl_file_in_file_order_with_default_ids(tmp_path):
    path = _write(tmp_path / "mine.jsonl", [
        json.dumps({"id": "a", "question": " Capital of France? ", "answers": ["Paris", "Paris", " "]}),
        "",
        json.dumps({"question": "Who wrote Hamlet?", "answers": ["Shakespeare"], "source": "lit"}),
    ])
    items = load_qa(path)
    assert [(i.id, i.question, i.answers, i.source) for i in items] == [
        ("a", "Capital of France?", ("Paris",), "mine"), ("mine-3", "Who wrote Hamlet?", ("Shakespeare",), "lit")]
    bom = tmp_path / "bom.jsonl"
    bom.write_bytes(b"\xef\xbb\xbf" + (tmp_path / "mine.jsonl").read_bytes())
    assert [(i.id, i.question, i.source) for i in read_qa_jsonl(bom)] == [
        ("a", "Capital of France?", "bom"), ("bom-3", "Who wrote Hamlet?", "lit")]


@pytest.mark.parametrize(("lines", "message"), [
    (['{"question": "q", "answers": ["a"]}', '{"question": "q2", "answers": ['], r"line 2: not valid JSON"),
    (['["q", "a"]'], r"line 1: expected a JSON object"),
    (['{"answers": ["a"]}'], r"line 1: field 'question' is None"),
    (['{"question": "q"}'], r"line 1: field 'answers' is missing"),
    (['{"question": "q", "answers": []}'], r"line 1: field 'answers' is empty"),
    (['{"question": "q", "answers": [" "]}'], r"line 1: field 'answers' is empty"),
    (['{"question": "q", "answers": "a"}'], r"line 1: field 'answers' is 'a': give a list of strings"),
    (['{"id": "x", "question": "q", "answers": ["a"]}', '{"id": "x", "question": "r", "answers": ["b"]}'],
     r"line 2: id 'x' is also on line 1"),
    (["", "  "], r"holds no questions"),
])
def test_jsonl_errors_name_the_file_and_line(tmp_path, lines, message):
    path = _write(tmp_path / "bad.jsonl", lines)
    with pytest.raises(AsymmetryError, match=message) as exc:
        load_qa(path)
    assert "bad.jsonl" in str(exc.value)


def test_non_utf8_missing_and_folder_inputs(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b'{"question": "q", "answers": ["a"]}\n{"question": "caf\xe9", "answers": ["a"]}\n')
    with pytest.raises(AsymmetryError, match=r"latin1.jsonl line 2 is not UTF-8 .*save the file as UTF-8"):
        load_qa(path)
    with pytest.raises(AsymmetryError, match="does not exist: pass a JSONL file"):
        load_qa(tmp_path / "missing.jsonl")
    with pytest.raises(AsymmetryError, match="is a folder"):
        load_qa(tmp_path)
