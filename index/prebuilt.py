"""Passage vectors shipped with the package: the default corpus embedded once, so a fresh install skips that work.

Embedding the 10,070 default passages takes 7-10 minutes on 2 CPU cores; it is the same work on every machine.
``index/data/default-vectors.npz`` holds the result (float16, 7.7 MB), keyed by the SHA-1 of each passage's
indexed text, with the embedding model's name and the SHA-256 of its weights. :func:`embed_with_prebuilt` takes a
passage's vector from there when the build's embedder is that model with those weights and the passage's text is
there; everything else (another corpus, chunking, model, an edited article) is embedded as usual.
``ASYMMETRY_PREBUILT_VECTORS=none`` turns the table off; a path points at a table of your own.

Trust, but verify: before the first shipped vector is used in a process, a few shipped passages are embedded afresh
and compared (cosine >= :data:`MIN_AGREEMENT`). A library version that embeds differently, or a damaged file, makes
the build warn and embed everything itself: never a silently mismatched index. The file is made by
``python tools/make_prebuilt_vectors.py`` from a finished build's shards.

Shapes: N passages, D embedding dimensions.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import zipfile
import zlib
from pathlib import Path

import numpy as np

from asymmetry.atomic import atomic_path
from asymmetry.embedder import Embedder, weights_sha256  # weights_sha256: also this module's API

log = logging.getLogger(__name__)

DEFAULT_FILE = Path(__file__).parent / "data" / "default-vectors.npz"
KEY_BYTES = 8  # the first 8 bytes of SHA-1: no collision among 10^4 texts (p ~ 10^-11)
MIN_AGREEMENT = 0.999  # cosine of a shipped vector with the same text embedded here (float16 rounding: ~0.99999)
SPOT_CHECKS = 4
FORMAT = "asymmetry-prebuilt-vectors/1"


def text_key(text: str) -> bytes:
    return hashlib.sha1(text.encode("utf-8")).digest()[:KEY_BYTES]


class PrebuiltVectors:
    """A read-only table text -> vector (D floats), for one embedding model."""

    def __init__(self, keys: np.ndarray, vectors: np.ndarray, meta: dict):
        self.meta = meta
        self.vectors = vectors  # (N, D) float16
        self._row = {bytes(k): i for i, k in enumerate(keys)}
        self._verified: bool | None = None  # None: not spot-checked yet
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._row)

    @classmethod
    def load(cls, path: Path = DEFAULT_FILE) -> PrebuiltVectors | None:
        """The table in ``path``, or None (with a warning) when it is missing or unreadable."""
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                meta = json.loads(str(data["meta"]))
                keys, vectors = data["keys"], data["vectors"]
            if meta.get("format") != FORMAT or keys.shape != (len(vectors), KEY_BYTES):
                raise ValueError(f"unexpected format {meta.get('format')!r} or shapes {keys.shape}/{vectors.shape}")
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
            log.warning("ignoring the prebuilt vectors in %s (%s): the build embeds every passage itself", path, exc)
            return None
        return cls(keys, vectors, meta)

    def matches(self, embedder: Embedder) -> bool:
        """The table was made with this embedder's model (name and weights) and backend (torch: int8 ONNX vectors
        differ from the shipped ones by more than the spot check allows)."""
        torch_vectors = getattr(embedder, "backend", "torch") == "torch"
        return torch_vectors and self.meta.get("embedding_model") == embedder.name and \
            self.meta.get("weights_sha256") == weights_sha256(embedder.path)

    def lookup(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Rows of the texts found (index into ``texts``) and their vectors (float32, (hits, D))."""
        found = [(i, self._row.get(text_key(t))) for i, t in enumerate(texts)]
        hits = np.array([i for i, r in found if r is not None], dtype=np.int64)
        rows = [r for _, r in found if r is not None]
        return hits, self.vectors[rows].astype(np.float32)  # (hits, D)

    def verified(self, embedder: Embedder, texts: list[str]) -> bool:
        """Once per table: embed up to SPOT_CHECKS of ``texts`` (all found in the table) here and compare."""
        with self._lock:
            if self._verified is None:
                sample = texts[:: max(1, len(texts) // SPOT_CHECKS)][:SPOT_CHECKS]
                fresh = embedder.encode(sample)  # (S, D)
                _, shipped = self.lookup(sample)  # (S, D)
                fresh = fresh / np.linalg.norm(fresh, axis=1, keepdims=True)
                shipped = shipped / np.linalg.norm(shipped, axis=1, keepdims=True)
                agreement = float((fresh * shipped).sum(axis=1).min())
                self._verified = agreement >= MIN_AGREEMENT
                if not self._verified:
                    log.warning("the prebuilt passage vectors disagree with this machine's embedder (cosine %.4f < "
                                "%.3f; another sentence-transformers version?): embedding every passage instead",
                                agreement, MIN_AGREEMENT)
            return self._verified


ENV = "ASYMMETRY_PREBUILT_VECTORS"  # a table file of your own, or "none" to embed every passage here
_TABLES: dict[Path, PrebuiltVectors | None] = {}


def default_table() -> PrebuiltVectors | None:
    """The table a build uses: ``$ASYMMETRY_PREBUILT_VECTORS`` (a path, or ``none``) or the shipped one; each file is
    read once per process (the shipped one is 7 MB)."""
    choice = os.environ.get(ENV, "").strip()
    if choice.lower() in ("none", "off", "0"):
        return None
    path = Path(choice).expanduser() if choice else DEFAULT_FILE
    if path not in _TABLES:
        _TABLES[path] = PrebuiltVectors.load(path)
    return _TABLES[path]


def embed_with_prebuilt(texts: list[str], embedder: Embedder, embed) -> tuple[np.ndarray, int]:
    """Vectors (N, D) for ``texts``: shipped ones where the table matches the embedder and holds the text, the rest
    from ``embed(texts) -> (n, D)``. Returns the vectors and how many came from the table."""
    table = default_table()
    if table is None or not table.matches(embedder):
        return embed(texts), 0
    hits, shipped = table.lookup(texts)  # (hits, D)
    if len(hits) == 0 or not table.verified(embedder, [texts[i] for i in hits]):
        return embed(texts), 0
    misses = np.setdiff1d(np.arange(len(texts)), hits)
    out = np.empty((len(texts), shipped.shape[1]), dtype=np.float32)  # (N, D)
    out[hits] = shipped
    if len(misses):
        out[misses] = embed([texts[i] for i in misses])
    return out, len(hits)


def write_table(path: Path, texts: list[str], vectors: np.ndarray, embedder: Embedder, corpus: dict) -> None:
    """Write a table of ``texts`` and their ``vectors`` (N, D) atomically (``tools/make_prebuilt_vectors.py``)."""
    first: dict[bytes, int] = {}
    for i, t in enumerate(texts):  # a text that occurs twice has one vector
        first.setdefault(text_key(t), i)
    rows = list(first.values())
    keys = np.frombuffer(b"".join(first), dtype=np.uint8).reshape(len(rows), KEY_BYTES)
    vectors = vectors[rows]  # (N', D)
    meta = {"format": FORMAT, "embedding_model": embedder.name, "weights_sha256": weights_sha256(embedder.path),
            "dimension": int(vectors.shape[1]), "passages": len(rows), "corpus": corpus}
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez_compressed(tmp, keys=keys, vectors=vectors.astype(np.float16), meta=np.array(json.dumps(meta)))
