"""Fault-injection helpers: damage a file the way a disk, an editor or an interruption would."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from asymmetry.cli import main


def flip_byte(path: Path, offset: int | None = None) -> None:
    """Flip every bit of one byte (default: the middle one)."""
    data = bytearray(path.read_bytes())
    i = len(data) // 2 if offset is None else offset
    data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def fix_from(message: str) -> list[str]:
    """The ``asymmetry ...`` command an error message prints as its fix, as argv for :func:`main` (up to the first
    character that ends a command in prose)."""
    start = message.index("asymmetry ")
    words = shlex.split(message[start:].split(" (")[0].split(";")[0].split(", or ")[0])
    assert words[0] == "asymmetry", message
    return words[1:]


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory, small_corpus) -> Path:
    """Eight articles of the small corpus (short: each is one or two passages), as JSONL."""
    lines = Path(small_corpus).read_text(encoding="utf-8").splitlines()[:8]
    path = tmp_path_factory.mktemp("corpus") / "tiny.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert all(json.loads(line)["text"] for line in lines)
    return path
