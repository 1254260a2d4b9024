"""Near-duplicate detection with MinHash signatures of word 3-grams.

A signature (64 uint32 values) is computed once per passage at index build time and stored with it, so removing
near-duplicates at query time costs a few vector comparisons per candidate instead of re-shingling texts. The share
of equal signature values estimates the Jaccard similarity of the two passages' word-3-gram sets.

Shapes: S shingles, H hash functions.
"""

from __future__ import annotations

import re
import zlib

import numpy as np

NUM_HASHES = 64
_WORD = re.compile(r"\w+")
_rng = np.random.default_rng(20240607)  # fixed: signatures must be comparable across builds and processes
_A = (_rng.integers(1, 2**63, size=NUM_HASHES, dtype=np.uint64) | np.uint64(1))  # (H,) odd multipliers
_B = _rng.integers(0, 2**63, size=NUM_HASHES, dtype=np.uint64)  # (H,)


def minhash(text: str) -> np.ndarray:
    """The MinHash signature (H,) uint32 of a text's lower-cased word 3-grams (stable across processes)."""
    words = _WORD.findall(text.lower())
    if not words:
        return np.full(NUM_HASHES, 0xFFFFFFFF, dtype=np.uint32)
    h = np.fromiter((zlib.crc32(w.encode()) for w in words), dtype=np.uint64, count=len(words))  # (W,)
    if len(h) >= 3:
        h = h[:-2] * np.uint64(0x9E3779B97F4A7C15) + h[1:-1] * np.uint64(0xC2B2AE3D27D4EB4F) + h[2:]  # (S,)
    with np.errstate(over="ignore"):
        mixed = (_A[:, None] * h[None, :] + _B[:, None]) >> np.uint64(32)  # (H, S)
    return mixed.min(axis=1).astype(np.uint32)  # (H,)


def is_near_duplicate(sig: np.ndarray, kept: np.ndarray, threshold: float) -> bool:
    """Whether ``sig`` (H,) has estimated Jaccard similarity >= ``threshold`` with any row of ``kept`` (K, H);
    one vectorised comparison for all kept signatures."""
    if len(kept) == 0:
        return False
    return int((kept == sig).sum(axis=1).max()) / NUM_HASHES >= threshold
