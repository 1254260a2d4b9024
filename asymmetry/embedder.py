"""The shared sentence embedder (ground floor): one object per model, passed to whoever embeds.

The engine embeds a question once and hands that vector to the router and the retriever; index builds and router
training embed passages and questions with the same class. There is no module-level cache: whoever owns an
:class:`Embedder` (the engine, a build, a test fixture) decides how long it lives.

Shapes: N texts, D embedding dimensions.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from asymmetry import defaults
from asymmetry.errors import AsymmetryError


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


class Embedder:
    """A sentence-transformers model, loaded on first use; ``encode`` returns normalised float32 vectors."""

    def __init__(self, model: str | None = None, device: str = "cpu"):
        self.path = embedding_model_path(model)
        self.name = embedding_model_name(model)
        self.device = device
        self._model = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Embedder({self.name!r}, loaded={self._model is not None})"

    @property
    def model(self):
        """The ``SentenceTransformer`` (loaded once, offline)."""
        with self._lock:
            if self._model is None:
                defaults.ensure_offline()
                from sentence_transformers import SentenceTransformer  # heavy: only when something is embedded

                with defaults.quiet_loading():
                    self._model = SentenceTransformer(str(self.path), device=self.device, local_files_only=True)
            return self._model

    @property
    def dimension(self) -> int:
        return int(self.model.get_embedding_dimension())

    def encode(self, texts: list[str], batch_size: int = 64, show_progress: bool = False) -> np.ndarray:
        """Normalised float32 embeddings, shape (N, D) (cosine similarity = inner product)."""
        model = self.model
        with self._lock:  # a fast tokenizer with padding/truncation must not be entered by two threads at once
            vectors = model.encode(list(texts), batch_size=batch_size, normalize_embeddings=True,
                                   convert_to_numpy=True, show_progress_bar=show_progress)
        return np.asarray(vectors, dtype=np.float32)  # (N, D)
