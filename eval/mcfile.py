"""The Kaggle LLM Science Exam CSV layout: read it strictly, write it from the shipped benchmarks, write submissions.

Columns: ``prompt`` (the question), option columns ``A``, ``B``, ... (consecutive letters from ``A``, at least two
columns; an empty cell is an absent option), and optional ``answer`` (the gold letter), ``id`` and ``source``.
Row numbers in errors are the file's line numbers (the header is line 1).
"""

from __future__ import annotations

import csv
import io
import os
import string
from dataclasses import dataclass, field
from pathlib import Path

from asymmetry.atomic import atomic_write_text
from asymmetry.datasets import load_mc
from asymmetry.errors import AsymmetryError
from asymmetry.integrity import read_utf8

LETTERS = string.ascii_uppercase
EXPORTABLE = ("arc_easy", "arc_challenge", "openbookqa", "sciq", "mmlu")


@dataclass
class MCRow:
    """One question of an MC file: ``options`` maps a column letter to its (non-empty) text."""

    id: str
    prompt: str
    options: dict[str, str]
    answer: str | None = None
    source: str = ""
    line: int = 0
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def letters(self) -> list[str]:
        return list(self.options)


def read_mc_csv(path: str | os.PathLike) -> list[MCRow]:
    """Read and validate a Kaggle-style MC file; every problem is an :class:`AsymmetryError` naming the line."""
    path = Path(path)
    if not path.is_file():
        raise AsymmetryError(f"{path} does not exist: pass a CSV file with a prompt column and option columns A, B, ...")
    text = read_utf8(path)
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        raise AsymmetryError(f"{path} is empty: it needs a header line with prompt, A, B, ... and one row per question")
    header = [h.strip() for h in header]
    dupes = sorted({h for h in header if header.count(h) > 1 and h})
    if dupes:
        raise AsymmetryError(f"{path} line 1: column {dupes[0]!r} appears twice: keep one column of that name")
    if "prompt" not in header:
        raise AsymmetryError(
            f"{path} line 1: missing column 'prompt' (found: {', '.join(header) or 'none'}): name the question "
            "column 'prompt' (Kaggle LLM Science Exam layout: prompt,A,B,C,D,E[,answer][,id])"
        )
    letters = [c for c in LETTERS if c in header]
    if letters[:2] != ["A", "B"]:
        raise AsymmetryError(
            f"{path} line 1: missing option columns (need at least 'A' and 'B', found: {', '.join(letters) or 'none'})"
            ": name the option columns A, B, C, ..."
        )
    expected = list(LETTERS[: len(letters)])
    if letters != expected:
        gap = next(x for x, y in zip(expected, letters) if x != y)
        raise AsymmetryError(f"{path} line 1: option columns skip {gap!r}: use consecutive letters A, B, C, ...")
    col = {name: i for i, name in enumerate(header)}
    rows: list[MCRow] = []
    seen_ids: dict[str, int] = {}
    line = reader.line_num
    for index, cells in enumerate(reader):
        start, line = line + 1, reader.line_num
        if not any(c.strip() for c in cells):
            continue  # blank line
        if len(cells) > len(header):
            raise AsymmetryError(
                f"{path} line {start}: {len(cells)} cells but the header has {len(header)} columns: quote cells "
                "that contain commas"
            )
        cells = cells + [""] * (len(header) - len(cells))

        def cell(name: str, cells: list[str] = cells) -> str:
            return cells[col[name]].strip() if name in col else ""

        prompt = cell("prompt")
        if not prompt:
            raise AsymmetryError(f"{path} line {start}: empty prompt: give every row a question")
        options = {c: cell(c) for c in letters if cell(c)}
        if not options:
            raise AsymmetryError(
                f"{path} line {start}: the row has no options (columns {', '.join(letters)} are empty): fill at "
                "least one option cell or remove the row"
            )
        answer = cell("answer").upper() or None
        if answer is not None and answer not in options:
            where = "is empty in this row" if answer in letters else "is not an option column"
            raise AsymmetryError(
                f"{path} line {start}: answer {answer!r} {where} (options: {', '.join(options)}): use one of those "
                "letters or leave answer empty"
            )
        qid = cell("id") or str(index)
        if qid in seen_ids:
            raise AsymmetryError(
                f"{path} line {start}: id {qid!r} already used on line {seen_ids[qid]}: give every row a unique id"
            )
        seen_ids[qid] = start
        known = {"prompt", "answer", "id", "source", *letters}
        extra = {h: cells[i] for h, i in col.items() if h not in known and h}
        rows.append(MCRow(qid, prompt, options, answer, cell("source"), start, extra))
    if not rows:
        raise AsymmetryError(f"{path} has a header but no questions: add one row per question")
    return rows


def export_rows(name: str, split: str, limit: int | None = None) -> list[dict[str, str]]:
    """The shipped benchmark ``name`` / ``split`` as Kaggle-layout rows (prompt, A.., answer, id, source)."""
    if name not in EXPORTABLE:
        raise AsymmetryError(f"unknown benchmark {name!r} for export: use one of {', '.join(EXPORTABLE)}")
    questions = load_mc(name, split)
    if limit is not None:
        questions = questions[:limit]
    rows = []
    for q in questions:
        if len(q.options) > len(LETTERS):
            raise AsymmetryError(f"{q.id} has {len(q.options)} options, more than {len(LETTERS)} letters")
        row = {"id": q.id, "prompt": q.question, "source": q.source}
        row.update({LETTERS[i]: opt for i, opt in enumerate(q.options)})
        row["answer"] = LETTERS[q.answer] if q.answer is not None else ""
        rows.append(row)
    return rows


def write_mc_csv(rows: list[dict[str, str]], path: str | os.PathLike) -> Path:
    """Write rows in the Kaggle layout (``id,prompt,A,B,...,answer,source``), atomically."""
    n = max((sum(1 for k in r if len(k) == 1 and k in LETTERS) for r in rows), default=2)
    fields = ["id", "prompt", *LETTERS[: max(n, 2)], "answer", "source"]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({f: r.get(f, "") for f in fields})
    atomic_write_text(path, buf.getvalue())
    return Path(path)


def write_submission(predictions: list[tuple[str, list[str]]], path: str | os.PathLike) -> Path:
    """Kaggle submission: ``id,prediction`` with the top letters space-separated, best first."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["id", "prediction"])
    for qid, letters in predictions:
        writer.writerow([qid, " ".join(letters)])
    atomic_write_text(path, buf.getvalue())
    return Path(path)
