"""Atomic writes: every built artefact goes to a temporary file beside its target and is renamed into place.

A reader sees the old file or the new one, never half of one; a crash leaves at most a hidden ``.NAME-*`` temp file.

    atomic_write_text(path, text)          # also atomic_write_bytes, atomic_write_json
    with atomic_path(path) as tmp:         # for writers that want a path (numpy.save, safetensors, sqlite, ...)
        numpy.save(tmp, array)
    with atomic_dir(folder) as tmp_dir:    # a whole folder, swapped in at the end
        ...
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from asymmetry.errors import AsymmetryError

SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})  # disk full, quota, file size limit (ulimit -f)
ACCESS_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS})


def write_error(path: str | os.PathLike | None, exc: OSError) -> AsymmetryError | None:
    """A one-line error for a write that failed for lack of space or permission (naming the file, the free space and
    the fix), or None for any other OSError."""
    target = Path(path or exc.filename or ".")
    folder = next((p for p in [target, *target.parents] if p.is_dir()), Path("."))
    if exc.errno in SPACE_ERRNOS:
        free = shutil.disk_usage(folder).free
        what = ("the file size limit (ulimit -f) was reached" if exc.errno == errno.EFBIG else
                "the disk is full" if exc.errno == errno.ENOSPC else "the disk quota is exceeded")
        return AsymmetryError(
            f"cannot write {target}: {what} ({free / 1e6:.0f} MB free on the filesystem of {folder}): free some space "
            "(or raise the limit) and rerun the same command; work finished before this is kept"
        )
    if exc.errno in ACCESS_ERRNOS:
        return AsymmetryError(
            f"cannot write {target}: {exc.strerror or 'permission denied'} ({folder} is not writable): make it "
            "writable, or choose a writable folder (--out, --index-dir, or ASYMMETRY_HOME for caches)"
        )
    return None


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temp path beside ``path`` (ending in ``suffix``, for writers that look at it); rename on success."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-", suffix=suffix)
    except OSError as exc:
        raise (write_error(path, exc) or exc) from None
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a built artefact gets the usual mode
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        err = write_error(path, exc)
        if err is None:
            raise
        raise err from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = 1) -> None:
    """Strict JSON (NaN and infinities are errors, not invalid JSON in the file), newline-terminated."""
    atomic_write_text(path, json.dumps(obj, indent=indent, allow_nan=False) + "\n")


@contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temp folder beside ``path``; on success it replaces ``path`` (an existing folder is removed
    only after the new one is complete)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}-"))
    except OSError as exc:
        raise (write_error(path, exc) or exc) from None
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; a built folder gets the usual mode
    try:
        yield tmp
        if path.exists():
            old = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}-old-"))
            os.replace(path, old / "x")
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        err = write_error(path, exc)
        if err is None:
            raise
        raise err from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
