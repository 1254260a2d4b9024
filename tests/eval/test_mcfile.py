"""The Kaggle MC CSV layout: strict reading with line numbers, export of the shipped sets, submissions."""

from __future__ import annotations

import csv

import pytest

from asymmetry.datasets import load_mc
from asymmetry.errors import AsymmetryError
from asymmetry.eval.mcfile import export_rows, read_mc_csv, write_mc_csv, write_submission
from asymmetry.eval.metrics import average_precision_at_k, mc_metrics


@pytest.fixture(scope="module")
def arc():
    return load_mc("arc_easy", "validation")[:5]


def _write(path, text, encoding="utf-8"):
    path.write_bytes(text.encode(encoding))
    return path


def test_export_roundtrip_matches_shipped_questions(tmp_path, arc):
    path = write_mc_csv(export_rows("arc_easy", "validation", limit=5), tmp_path / "arc.csv")
    rows = read_mc_csv(path)
    assert [r.id for r in rows] == [q.id for q in arc]
    for row, q in zip(rows, arc):
        assert row.prompt == q.question
        assert list(row.options.values()) == q.options
        assert row.answer == "ABCDE"[q.answer]
        assert row.source == "arc_easy"


def test_export_mmlu_and_unknown_name(tmp_path):
    rows = export_rows("mmlu", "train", limit=3)
    assert len(rows) == 3 and all(r["answer"] in "ABCD" for r in rows)
    with pytest.raises(AsymmetryError, match="unknown benchmark 'hellaswagx'"):
        export_rows("hellaswagx", "validation")


def test_any_number_of_options_and_empty_cells(tmp_path):
    path = _write(tmp_path / "q.csv", "prompt,A,B,C,answer\nTwo plus two?,three,,four,C\nSky colour?,blue,green,,A\n")
    rows = read_mc_csv(path)
    assert rows[0].options == {"A": "three", "C": "four"} and rows[0].answer == "C"
    assert rows[1].letters == ["A", "B"]
    assert [r.id for r in rows] == ["0", "1"]  # Kaggle ids default to the row index


@pytest.mark.parametrize(
    "text, message",
    [
        ("question,A,B\nq,a,b\n", r"line 1: missing column 'prompt'"),
        ("prompt,answer\nq,A\n", r"line 1: missing option columns"),
        ("prompt,A,B,D\nq,a,b,d\n", r"option columns skip 'C'"),
        ("prompt,A,B\nq1,a,b\nq2,,\n", r"line 3: the row has no options"),
        ("prompt,A,B,answer\nq1,a,b,A\nq2,a,b,E\n", r"line 3: answer 'E' is not an option column"),
        ("prompt,A,B,C,answer\nq1,a,b,,C\n", r"line 2: answer 'C' is empty in this row"),
        ("id,prompt,A,B\nx,q1,a,b\nx,q2,a,b\n", r"line 3: id 'x' already used on line 2"),
        ("prompt,A,B\n", r"no questions"),
    ],
)
def test_bad_files_name_the_line_and_the_fix(tmp_path, text, message):
    with pytest.raises(AsymmetryError, match=message):
        read_mc_csv(_write(tmp_path / "bad.csv", text))


def test_multiline_cells_keep_true_line_numbers(tmp_path):
    path = _write(tmp_path / "q.csv", 'prompt,A,B,answer\n"first\nquestion",a,b,A\nq2,a,b,Z\n')
    with pytest.raises(AsymmetryError, match="line 4: answer 'Z'"):
        read_mc_csv(path)


def test_not_utf8_names_the_line(tmp_path):
    path = _write(tmp_path / "latin.csv", "prompt,A,B\nq1,a,b\nCaf\u00e9?,oui,non\n", encoding="latin-1")
    with pytest.raises(AsymmetryError, match=r"not UTF-8 \(invalid byte 0xe9 on line 3\).*iconv"):
        read_mc_csv(path)


def test_submission_format(tmp_path):
    path = write_submission([("0", ["B", "A", "C"]), ("1", ["D", "C", "A"])], tmp_path / "submission.csv")
    with open(path, newline="") as fh:
        assert list(csv.reader(fh)) == [["id", "prediction"], ["0", "B A C"], ["1", "D C A"]]


def test_map_at_3():
    assert average_precision_at_k(["A", "B", "C"], "A") == 1.0
    assert average_precision_at_k(["B", "A", "C"], "A") == 0.5
    assert average_precision_at_k(["B", "C", "A"], "A") == pytest.approx(1 / 3)
    assert average_precision_at_k(["B", "C", "D", "A"], "A") == 0.0
    assert average_precision_at_k(["B", "B", "A"], "A") == 0.5  # a repeated letter counts once
    m = mc_metrics([["A", "B"], ["B", "A"], ["C", "A"]], ["A", "A", ""])
    assert m == {"map@3": 0.75, "accuracy": 0.5, "n": 2.0}
