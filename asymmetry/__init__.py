"""asymmetry: a local retrieval-augmented mixture-of-experts assistant with a stackable sampler."""

from __future__ import annotations

__version__ = "0.1.0"
