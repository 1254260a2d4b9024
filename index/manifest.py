"""The index manifest: what an index folder holds and how it was built. Written last, so its presence marks a
complete index; every file it lists carries a size and SHA-256 that :func:`load_manifest` can verify."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from asymmetry import defaults
from asymmetry.atomic import atomic_write_text
from asymmetry.errors import AsymmetryError
from asymmetry.index.corpus import file_sha256

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
FAISS_NAME = "index.faiss"
STORE_NAME = "passages.sqlite"
BM25_DIR = "bm25"
VECTORS_NAME = "vectors.npy"  # IVF-PQ only: the exact vectors, memory-mapped for re-ranking
WORK_DIR = ".build"


def default_index_dir() -> Path:
    return defaults.home() / "indexes" / "default"


def resolve_index_dir(index_dir: str | os.PathLike | None) -> Path:
    return Path(index_dir).expanduser() if index_dir else default_index_dir()


@dataclass
class Manifest:
    format_version: int
    embedding_model: str
    embedding_dim: int
    index_type: str
    index_params: dict
    passage_count: int
    article_count: int
    corpus: dict
    chunking: dict
    lexical: dict
    build: dict = field(default_factory=dict)  # the build spec (used to resume and to detect changes)
    files: dict = field(default_factory=dict)  # relative path -> {"bytes": int, "sha256": str}
    created: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, ensure_ascii=False)


def file_entries(root: Path, relpaths: list[str]) -> dict:
    out = {}
    for rel in relpaths:
        p = root / rel
        files = sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p]
        for f in files:
            out[str(f.relative_to(root))] = {"bytes": f.stat().st_size, "sha256": file_sha256(f)}
    return out


def write_manifest(index_dir: Path, manifest: Manifest) -> None:
    atomic_write_text(index_dir / MANIFEST_NAME, manifest.to_json())


def read_manifest(index_dir: Path) -> Manifest | None:
    """The manifest of a complete index, or None when the folder holds none (missing or half-built)."""
    path = index_dir / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        manifest = Manifest(**data)
    except (ValueError, TypeError) as exc:
        raise AsymmetryError(
            f"{path} is damaged ({exc}): rebuild with asymmetry index build --index-dir {index_dir} --rebuild"
        ) from exc
    if manifest.format_version != FORMAT_VERSION:
        raise AsymmetryError(
            f"{index_dir} has index format {manifest.format_version}, this version reads {FORMAT_VERSION}: rebuild "
            f"with asymmetry index build --index-dir {index_dir} --rebuild"
        )
    return manifest


def load_manifest(index_dir: Path, verify: bool = True) -> Manifest:
    """The manifest of a complete index, checking that every listed file is present, the right size and (when
    ``verify``) has the recorded SHA-256."""
    manifest = read_manifest(index_dir)
    if manifest is None:
        raise AsymmetryError(
            f"{index_dir} holds no complete index (no {MANIFEST_NAME}): build it with "
            f"asymmetry index build --index-dir {index_dir}"
        )
    for rel, entry in manifest.files.items():
        p = index_dir / rel
        if not p.is_file():
            problem = "is missing"
        elif p.stat().st_size != entry["bytes"]:
            problem = f"has {p.stat().st_size} bytes, the manifest says {entry['bytes']}"
        elif verify and file_sha256(p) != entry["sha256"]:
            problem = "does not match its checksum"
        else:
            continue
        raise AsymmetryError(
            f"index file {p} {problem} (damaged): rebuild with asymmetry index build --index-dir {index_dir} "
            "--rebuild (finished embedding shards are reused)"
        )
    return manifest
