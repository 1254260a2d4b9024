"""Integrity checks shared by every reader of a persisted artefact and every validator of a numeric setting.

Checksums: an artefact that is written and later read back (a router file, an index's embedding shards, ...) gets a
sidecar ``NAME.sha256`` written after it (``sha256sum`` format: ``HEX  NAME``); :func:`verify_checksum` compares it on
load and raises an :class:`AsymmetryError` naming the file and the command that rebuilds it.

    write_checksum(path)                                  # after the artefact is complete
    verify_checksum(path, rebuild="asymmetry router train")

Numbers: :func:`finite_number` and :func:`positive_int` reject what TOML and CLI flags can both carry (``nan``,
``inf``, booleans, zero or negative counts) with a :class:`ConfigError` naming the field.

Logs: :func:`read_jsonl_log` reads an append-only JSONL log (an eval run's ``predictions.jsonl``); a half-written
last line (an interrupted run) is cut away atomically before anyone appends to the file again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Callable
from pathlib import Path

from asymmetry.atomic import atomic_write_bytes, atomic_write_text
from asymmetry.errors import AsymmetryError, ConfigError

log = logging.getLogger(__name__)

CHECKSUM_SUFFIX = ".sha256"


# -- checksums --------------------------------------------------------------------------------------------------------
def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def checksum_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path.with_name(path.name + CHECKSUM_SUFFIX)


def write_checksum(path: str | os.PathLike) -> str:
    """Write ``path.sha256`` for the finished file ``path`` (atomically); returns the hex digest."""
    path = Path(path)
    digest = sha256_file(path)
    atomic_write_text(checksum_path(path), f"{digest}  {path.name}\n")
    return digest


def read_checksum(path: str | os.PathLike) -> str | None:
    """The digest recorded for ``path``, or None when it has no sidecar (an artefact written before checksums)."""
    side = checksum_path(path)
    if not side.is_file():
        return None
    text = side.read_text(encoding="utf-8", errors="replace").split()
    return text[0].lower() if text else ""


def cache_is_intact(path: str | os.PathLike) -> bool:
    """For a cache (rebuilt when damaged, never an error): False when ``path`` no longer matches the checksum written
    with it, with a warning; True when it matches or has none (a cache written before checksums)."""
    expected = read_checksum(path)
    if expected is None or sha256_file(path) == expected:
        return True
    log.warning("cache file %s is damaged (it does not match its checksum): it will be rebuilt", path)
    return False


def verify_checksum(path: str | os.PathLike, rebuild: str, *, required: bool = False, what: str = "file") -> None:
    """Check ``path`` against its sidecar checksum. A mismatch (or, when ``required``, a missing sidecar) raises an
    :class:`AsymmetryError` naming the file and ``rebuild``, the command that writes a good one. A missing sidecar
    otherwise only logs (an artefact written before checksums existed)."""
    path = Path(path)
    expected = read_checksum(path)
    if expected is None:
        if required:
            raise AsymmetryError(f"{what} {path} has no checksum ({checksum_path(path).name} is missing), so it "
                                 f"cannot be trusted: rebuild it with {rebuild}")
        log.info("%s has no checksum file (written before checksums): not verified", path)
        return
    actual = sha256_file(path)
    if actual != expected:
        raise AsymmetryError(
            f"{what} {path} is damaged (sha256 {actual[:12]}..., its checksum file says {expected[:12]}...): "
            f"rebuild it with {rebuild}"
        )


FOLDER_SUMS = "SHA256SUMS"  # a folder artefact's checksums (sha256sum format), written last


def write_folder_checksums(folder: str | os.PathLike, names: list[str] | None = None) -> None:
    """Write ``folder/SHA256SUMS`` for ``names`` (default: every file directly in the folder)."""
    folder = Path(folder)
    names = sorted(names if names is not None else (f.name for f in folder.iterdir()
                                                    if f.is_file() and f.name != FOLDER_SUMS))
    atomic_write_text(folder / FOLDER_SUMS, "".join(f"{sha256_file(folder / n)}  {n}\n" for n in names))


def _folder_sums(folder: Path) -> list[tuple[str, Path]] | None:
    """The ``(digest, path)`` entries of ``folder/SHA256SUMS`` (None when there is none); a line that is not
    ``HEX  NAME`` raises ValueError."""
    sums = folder / FOLDER_SUMS
    if not sums.is_file():
        return None
    entries = []
    for line in sums.read_text(encoding="utf-8", errors="replace").splitlines():
        parts = line.split(None, 1)
        if len(parts) != 2:
            raise ValueError(f"line {line[:60]!r}")
        entries.append((parts[0].lower(), folder / parts[1].strip().lstrip("*")))
    return entries


def verify_folder_checksums(folder: str | os.PathLike, rebuild: str, *, what: str = "folder") -> bool:
    """Check every file listed in ``folder/SHA256SUMS``; False when the folder has none (written before checksums).
    A missing or changed file raises an :class:`AsymmetryError` naming it and ``rebuild``."""
    folder = Path(folder)
    try:
        entries = _folder_sums(folder)
    except ValueError as exc:
        raise AsymmetryError(f"{what} {folder}: {FOLDER_SUMS} is damaged ({exc}): rebuild it with {rebuild}") from None
    if entries is None:
        return False
    for expected, path in entries:
        name = path.name
        if not path.is_file():
            raise AsymmetryError(f"{what} {folder} lacks {name} (listed in {FOLDER_SUMS}): rebuild it with {rebuild}")
        actual = sha256_file(path)
        if actual != expected:
            raise AsymmetryError(f"{what} file {path} is damaged (sha256 {actual[:12]}..., {FOLDER_SUMS} says "
                                 f"{expected[:12]}...): rebuild it with {rebuild}")
    return True


def read_utf8(path: str | os.PathLike, what: str = "") -> str:
    """The text of a UTF-8 file (a byte-order mark dropped); any other encoding is an :class:`AsymmetryError` naming
    the line, the byte and the conversion that fixes it. ``what`` names the file's role ("grammar file")."""
    path = Path(path)
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise AsymmetryError(
            f"{what + ' ' if what else ''}{path} is not UTF-8 (invalid byte 0x{raw[exc.start]:02x} on line {line}): "
            f"re-save it as UTF-8, e.g. iconv -f latin1 -t utf-8 {path.name} > fixed{path.suffix}"
        ) from None


LARGE_FILE = 64 << 20  # above this, a quick check compares sizes (and a safetensors header), not the full hash


def safetensors_complete(path: str | os.PathLike) -> bool:
    """True when a ``.safetensors`` file is as long as its header says (a cut or padded file is not)."""
    try:
        with open(path, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            if not 0 < n < 100 << 20:
                return False
            header = json.loads(fh.read(n))
        ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"]
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return False
    return Path(path).stat().st_size == 8 + n + max(ends, default=0)


def folder_quick_check(folder: str | os.PathLike) -> str | None:
    """A cheap check of a large cached folder with ``SHA256SUMS`` (a converted model: gigabytes): every listed file
    present, small files hashed, large ``.safetensors`` files complete per their header. Returns the problem, or
    None (also for a folder without sums). The full check is ``sha256sum -c SHA256SUMS`` in the folder."""
    try:
        entries = _folder_sums(Path(folder))
    except ValueError:
        return f"{FOLDER_SUMS} is damaged"
    for expected, path in entries or []:
        if not path.is_file():
            return f"{path.name} is missing"
        if path.stat().st_size <= LARGE_FILE:
            if sha256_file(path) != expected:
                return f"{path.name} does not match its checksum"
        elif path.suffix == ".safetensors" and not safetensors_complete(path):
            return f"{path.name} is truncated or padded"
    return None


# -- numeric settings -------------------------------------------------------------------------------------------------
def finite_number(field: str, value: object, fix: str, *, minimum: float | None = None,
                  maximum: float | None = None, above: float | None = None) -> float:
    """``value`` as a float when it is a finite real number (not a bool) within the bounds, else a ConfigError."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(field, value, f"not a finite number; {fix}")
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum) or (
            above is not None and value <= above):
        raise ConfigError(field, value, fix)
    return float(value)


def positive_int(field: str, value: object, fix: str = "use a positive integer", *, minimum: int = 1) -> int:
    """``value`` when it is an integer (not a bool) >= ``minimum``, else a ConfigError."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(field, value, fix)
    return value


def strict_json(obj: object) -> object:
    """``obj`` with every non-finite float (an undefined metric: NaN, an infinity) replaced by None, so it can be
    written as strict JSON (``allow_nan=False``)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json(v) for v in obj]
    return obj


# -- append-only JSONL logs -------------------------------------------------------------------------------------------
def read_jsonl_log(path: str | os.PathLike, valid: Callable[[object], bool], damaged: Callable[[int], Exception]
                   ) -> list[dict]:
    """The records of an append-only JSONL log, in order. A half-written last line (``valid`` is false for it, or it
    is not JSON) is cut away atomically (the good prefix replaces the file) with a warning, so the next append starts
    on a fresh line; a damaged line before the last raises ``damaged(line number)``. A complete last record missing
    its newline gets one."""
    path = Path(path)
    if not path.is_file():
        return []
    data = path.read_bytes()
    segments = data.split(b"\n")  # the last segment is b"" when the file ends with a newline
    final = max((i for i, raw in enumerate(segments) if raw.strip()), default=-1)  # the last line with content
    records: list[dict] = []
    keep = 0  # bytes of the good prefix
    for i, raw in enumerate(segments[: final + 1]):
        rec = None
        if raw.strip():
            try:
                rec = json.loads(raw.decode("utf-8"))
                ok = valid(rec)
            except (UnicodeDecodeError, ValueError):
                ok = False
            if not ok:
                if i < final:
                    raise damaged(i + 1)
                log.warning("%s: the last line (%d) is half-written (an interrupted run): it is cut away and that "
                            "item is done again", path, i + 1)
                break
            records.append(rec)
        keep += len(raw) + 1
    good = data[:keep] if keep <= len(data) else data + b"\n"
    if good != data:
        atomic_write_bytes(path, good)
    return records
