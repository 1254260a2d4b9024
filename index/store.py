"""The passage store: SQLite keyed by FAISS id, holding title, text, url and metadata (JSON)."""

from __future__ import annotations

import functools
import json
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from asymmetry.atomic import atomic_path
from asymmetry.errors import AsymmetryError
from asymmetry.index import manifest as mf
from asymmetry.index.dedup import minhash

SCHEMA = (
    "CREATE TABLE passages (id INTEGER PRIMARY KEY, title TEXT NOT NULL, text TEXT NOT NULL, url TEXT, meta TEXT, "
    "sig BLOB)"  # sig: MinHash signature for near-duplicate removal (asymmetry.index.dedup)
)


@dataclass
class StoredPassage:
    id: int
    title: str
    text: str
    url: str
    metadata: dict
    signature: np.ndarray | None = None  # (H,) uint32 MinHash, None in stores written without it


def write_store(path: Path, rows: Iterable[tuple[int, str, str, str, dict]]) -> int:
    """Write ``(id, title, text, url, metadata)`` rows to a new store at ``path`` (atomically), with each text's
    MinHash signature. Returns the count."""
    count = 0
    with atomic_path(path, suffix=".sqlite") as tmp:
        con = sqlite3.connect(tmp)
        try:
            con.execute(SCHEMA)
            batch = []
            for pid, title, text, url, meta in rows:
                batch.append((pid, title, text, url, json.dumps(meta, ensure_ascii=False), minhash(text).tobytes()))
                if len(batch) >= 10_000:
                    con.executemany("INSERT INTO passages VALUES (?, ?, ?, ?, ?, ?)", batch)
                    count += len(batch)
                    batch.clear()
            con.executemany("INSERT INTO passages VALUES (?, ?, ?, ?, ?, ?)", batch)
            count += len(batch)
            con.commit()
        finally:
            con.close()
    return count


@functools.lru_cache(maxsize=4096)
def _parsed_metadata(text: str) -> dict:
    return json.loads(text)


def _metadata(text: str | None) -> dict:
    """A fresh dict of a row's metadata JSON; the parse is cached (many passages share e.g. one topic label)."""
    return dict(_parsed_metadata(text)) if text else {}


# A store up to this size is held in memory as its rows (a lookup is then dict access, not a SQLite query: about
# 0.15 ms less per search); larger stores are read from SQLite per lookup.
IN_MEMORY_MAX_BYTES = 64 * 2**20


class PassageStore:
    """Read-only access to a passage store; safe to share across threads."""

    def __init__(self, path: Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise AsymmetryError(
                f"passage store {self.path} is missing: rebuild with {mf.rebuild_command(self.path.parent)}")
        try:
            self._con = sqlite3.connect(f"file:{self.path}?mode=ro&immutable=1", uri=True, check_same_thread=False)
            (self._count,) = self._con.execute("SELECT COUNT(*) FROM passages").fetchone()
            columns = {r[1] for r in self._con.execute("PRAGMA table_info(passages)")}
        except sqlite3.DatabaseError as exc:
            raise AsymmetryError(
                f"passage store {self.path} is damaged ({exc}): rebuild with {mf.rebuild_command(self.path.parent)}"
            ) from exc
        self._select = "SELECT id, title, text, url, meta" + (", sig" if "sig" in columns else ", NULL")
        self._rows: dict[int, tuple] | None = None
        if self.path.stat().st_size <= IN_MEMORY_MAX_BYTES:  # small stores (the default index: 10 MB) are read once
            self._rows = {r[0]: r for r in self._con.execute(f"{self._select} FROM passages")}

    def __len__(self) -> int:
        return self._count

    def get(self, ids: Sequence[int]) -> list[StoredPassage]:
        """Passages for ``ids`` in the same order (ids must exist)."""
        ids = [int(i) for i in ids]
        if not ids:
            return []
        if self._rows is not None:
            rows = [r for i in ids if (r := self._rows.get(i)) is not None]
        else:
            marks = ",".join("?" * len(ids))
            rows = self._con.execute(f"{self._select} FROM passages WHERE id IN ({marks})", ids).fetchall()
        found = {
            r[0]: StoredPassage(r[0], r[1], r[2], r[3] or "", _metadata(r[4]),
                                np.frombuffer(r[5], dtype=np.uint32) if r[5] else None)
            for r in rows
        }
        missing = [i for i in ids if i not in found]
        if missing:
            raise AsymmetryError(
                f"passage store {self.path} lacks id {missing[0]} that the index returned: the index folder is "
                f"inconsistent; rebuild with {mf.rebuild_command(self.path.parent)}"
            )
        return [found[i] for i in ids]

    def close(self) -> None:
        self._con.close()
