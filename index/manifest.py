"""The index manifest: what an index folder holds and how it was built. Written last, so its presence marks a
complete index; every file it lists carries a size and SHA-256 that :func:`load_manifest` can verify."""

from __future__ import annotations

import json
import os
import shlex
from dataclasses import asdict, dataclass, field
from pathlib import Path

from asymmetry import defaults
from asymmetry.atomic import atomic_write_text
from asymmetry.errors import AsymmetryError
from asymmetry.integrity import sha256_file

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
FAISS_NAME = "index.faiss"
STORE_NAME = "passages.sqlite"
BM25_DIR = "bm25"
VECTORS_NAME = "vectors.npy"  # IVF-PQ only: the exact vectors, memory-mapped for re-ranking
WORK_DIR = ".build"
SPEC_NAME = "spec.json"  # in WORK_DIR: the spec of the build whose shards are there


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


def embed_backend(manifest: Manifest) -> str:
    """The backend that embedded the index's passages (``torch`` unless the build spec names another); its queries
    must be embedded with the same one."""
    return str(manifest.build.get("embed_backend", "torch"))


def file_entries(root: Path, relpaths: list[str]) -> dict:
    out = {}
    for rel in relpaths:
        p = root / rel
        files = sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p]
        for f in files:
            out[str(f.relative_to(root))] = {"bytes": f.stat().st_size, "sha256": sha256_file(f)}
    return out


def quote(value: object) -> str:
    return shlex.quote(str(value))


def read_spec(index_dir: Path) -> dict | None:
    """The build spec recorded in the work area (which corpus, model and chunking its shards hold), or None."""
    try:
        spec = json.loads((index_dir / WORK_DIR / SPEC_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return spec if isinstance(spec, dict) and isinstance(spec.get("corpus"), dict) else None


def _recorded(index_dir: Path) -> dict:
    """What the folder records of its build: the manifest's fields when it still parses, else the work area's spec
    (corpus source, shard size, index type), for the fix that rebuilds it."""
    try:
        raw = json.loads((index_dir / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raw = {}
    raw = raw if isinstance(raw, dict) else {}
    build = raw.get("build") if isinstance(raw.get("build"), dict) else read_spec(index_dir) or {}
    corpus = raw.get("corpus") if isinstance(raw.get("corpus"), dict) else build.get("corpus") or {}
    return {"source": corpus.get("source") if isinstance(corpus, dict) else None,
            "shard_size": build.get("shard_size"), "index_type": raw.get("index_type"),
            "embed_backend": build.get("embed_backend")}


def _corpus_argument(source: object) -> str | None:
    if not isinstance(source, str) or not source:
        return None
    return source if source == "default" else str(Path(source).expanduser().resolve())


def rebuild_command(index_dir: Path, manifest: Manifest | None = None) -> str:
    """The command that rebuilds the index in ``index_dir`` as it was built (its corpus, shard size and index type:
    the manifest's, else the work area's spec), reusing the finished embedding shards. Every damaged-index message
    prints it."""
    recorded = _recorded(index_dir)
    if manifest is not None:
        recorded.update(source=manifest.corpus.get("source"), index_type=manifest.index_type,
                        shard_size=manifest.build.get("shard_size", recorded["shard_size"]),
                        embed_backend=manifest.build.get("embed_backend"))
    corpus = _corpus_argument(recorded["source"])
    if corpus is None:
        corpus = "default" if index_dir == default_index_dir() else "CORPUS-IT-WAS-BUILT-FROM"
    cmd = f"asymmetry index build --index-dir {quote(index_dir)} --corpus {quote(corpus)}"
    if isinstance(recorded["index_type"], str) and recorded["index_type"] in ("flat", "hnsw", "ivfpq"):
        cmd += f" --index-type {recorded['index_type']}"
    if isinstance(recorded["shard_size"], int) and recorded["shard_size"] > 0:
        cmd += f" --shard-size {recorded['shard_size']}"
    if recorded["embed_backend"] in ("onnx", "onnx-int8"):
        cmd += f" --embed-backend {recorded['embed_backend']}"
    return cmd + " --rebuild"


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
        if not all(isinstance(x, dict) for x in (manifest.files, manifest.corpus, manifest.build)):
            raise TypeError("files, corpus and build must be objects")
    except (ValueError, TypeError) as exc:
        raise AsymmetryError(f"{path} is damaged ({exc}): rebuild with {rebuild_command(index_dir)}") from None
    if manifest.format_version != FORMAT_VERSION:
        raise AsymmetryError(
            f"{index_dir} has index format {manifest.format_version}, this version reads {FORMAT_VERSION}: rebuild "
            f"with {rebuild_command(index_dir, manifest)}"
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
        if not isinstance(entry, dict) or not isinstance(entry.get("bytes"), int):
            problem = "has a damaged entry in the manifest"
        elif not p.is_file():
            problem = "is missing"
        elif p.stat().st_size != entry["bytes"]:
            problem = f"has {p.stat().st_size} bytes, the manifest says {entry['bytes']}"
        elif verify and sha256_file(p) != entry["sha256"]:
            problem = "does not match its checksum"
        else:
            continue
        raise AsymmetryError(
            f"index file {p} {problem} (damaged): rebuild with {rebuild_command(index_dir, manifest)} (finished "
            "embedding shards are reused)"
        )
    return manifest
