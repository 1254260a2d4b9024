"""The sentence-transformers embedder, loaded once per model path and shared (index build, retrieval, router)."""

from __future__ import annotations

import threading
from pathlib import Path

from asymmetry import defaults
from asymmetry.errors import AsymmetryError

_LOCK = threading.Lock()
_EMBEDDERS: dict[str, object] = {}


def embedding_model_path(model: str | None = None) -> Path:
    """``None`` or ``"default"``: the embedded all-MiniLM-L6-v2; otherwise a local sentence-transformers folder."""
    if model in (None, "default", defaults.DEFAULT_EMBEDDING_NAME):
        return defaults.embedding_model_path()
    path = Path(model).expanduser()
    if not path.is_dir():
        raise AsymmetryError(f"embedding model folder {path} does not exist: pass a local sentence-transformers folder")
    return path


def embedding_model_name(model: str | None = None) -> str:
    """A stable name recorded in manifests (index, router) to detect a mismatched embedding model."""
    path = embedding_model_path(model)
    if path == defaults.embedding_model_path():
        return defaults.DEFAULT_EMBEDDING_NAME
    return str(path.resolve())


def load_embedder(model: str | None = None, device: str = "cpu"):
    """A cached ``SentenceTransformer`` (normalised embeddings are requested at encode time)."""
    path = embedding_model_path(model)
    key = f"{path}:{device}"
    with _LOCK:
        if key not in _EMBEDDERS:
            from sentence_transformers import SentenceTransformer

            _EMBEDDERS[key] = SentenceTransformer(str(path), device=device, local_files_only=True)
        return _EMBEDDERS[key]


def embed(texts: list[str], model: str | None = None, batch_size: int = 64, show_progress: bool = False):
    """Normalised float32 embeddings, shape (n, d)."""
    import numpy as np

    embedder = load_embedder(model)
    vectors = embedder.encode(
        texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=show_progress
    )
    return np.asarray(vectors, dtype=np.float32)
