"""What the model cache (``<ASYMMETRY_HOME>/models``) holds, and pruning what can be made again.

Kinds of entry:

* ``gguf``: a GGUF joined from the parts of a model package (the default 1.5B; seconds to join again);
* ``gguf-folder``: a GGUF's config and tokenizer files (megabytes; the weights stay in the GGUF);
* ``conversion``: a safetensors folder of a GGUF's weights dequantised to a dtype (``<folder>-float32`` and the like,
  :func:`experts.base.convert_gguf`): read by ``device_map`` and bitsandbytes placements, outside tools, and the CPU
  load of a GGUF whose block types the fast reader cannot size (the 0.5B's Q5_0); converted again when a load needs
  it. Gigabytes, and earlier versions wrote one on every CPU load;
* ``temporary``: the leftover of a write that was killed (a hidden ``.NAME-XXXX`` entry; a finished write renames it);
* ``other``: anything else (never touched).

``prune`` removes conversions and temporaries older than ``TEMP_AGE_S`` (a younger one may be a write in progress).
"""

from __future__ import annotations

import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from asymmetry.experts import gguf as gguf_loader

CONVERSION_DTYPES = ("float32", "bfloat16", "float16")
TEMP_AGE_S = 3600.0
PRUNED_KINDS = ("conversion", "temporary")


@dataclass(frozen=True)
class CacheEntry:
    path: str
    kind: str
    bytes: int
    modified: float  # seconds since the epoch

    def to_dict(self) -> dict:
        return asdict(self)


def size_of(path: Path) -> int:
    """Bytes of a file, or of every file under a folder (links as links)."""
    if path.is_symlink() or path.is_file():
        return path.lstat().st_size
    return sum(p.lstat().st_size for p in path.rglob("*") if p.is_file() or p.is_symlink())


def _kind(path: Path) -> str:
    name = path.name
    if name.startswith("."):
        return "temporary"
    if path.is_file() and name.endswith(".gguf"):
        return "gguf"
    if path.is_dir() and gguf_loader.is_gguf_folder(path):
        return "gguf-folder"
    stem, _, dtype = name.rpartition("-")
    if path.is_dir() and dtype in CONVERSION_DTYPES and stem and (path / "config.json").is_file():
        return "conversion"
    return "other"


def entries(folder: Path) -> list[CacheEntry]:
    """Every entry directly in ``folder`` (the models cache), largest first."""
    if not folder.is_dir():
        return []
    found = [CacheEntry(str(p), _kind(p), size_of(p), p.lstat().st_mtime) for p in folder.iterdir()]
    return sorted(found, key=lambda e: -e.bytes)


def prunable(entry: CacheEntry, now: float | None = None) -> bool:
    if entry.kind == "conversion":
        return True
    return entry.kind == "temporary" and (now or time.time()) - entry.modified > TEMP_AGE_S


def prune(folder: Path, dry_run: bool = False) -> list[CacheEntry]:
    """Remove the conversions and old temporaries in ``folder``; return what was (or, with ``dry_run``, would be)
    removed."""
    now = time.time()
    gone = [e for e in entries(folder) if prunable(e, now)]
    if not dry_run:
        for e in gone:
            path = Path(e.path)
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
    return gone
