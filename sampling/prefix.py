"""Reusing the KV cache of a prompt prefix across calls (a chat's turns).

A :class:`PromptCache` holds the KV cache of the last sequence one model row saw (the prompt and the reply tokens
fed back), the ids of that sequence, and a key naming the model and the per-row forward kwargs (the adapter) it
was computed with. The next generation on the same key whose prompt starts with some of those ids keeps the cache
cropped to the longest common prefix and prefills only the rest; anything else starts from an empty cache. One
cache per conversation, never longer than the longest sequence it decoded (bounded by the context budget).

    cache = PromptCache()
    generator.generate(turn1_ids, config, prompt_cache=cache)   # stats: reused_tokens 0
    generator.generate(turn2_ids, config, prompt_cache=cache)   # reuses turn 1's prompt + reply where they match

Only the plain path reuses (one row: no CFG negative, no mixture branch); a batched or multi-row generation leaves
the held cache as it was. The generator keeps the entry consistent step by step: it is emptied before each
forward and set again after it, so an interrupted or failed generation never leaves ids that do not match the KV.
"""

from __future__ import annotations

import threading
from typing import Any


def _shared_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def croppable(cache: Any) -> bool:
    """A cache whose every layer keeps all past positions (no sliding window, no linear-attention state)."""
    layers = getattr(cache, "layers", None)
    if not layers or not hasattr(cache, "crop") or not hasattr(cache, "get_seq_length"):
        return False
    return all(not getattr(layer, "is_sliding", True) and hasattr(layer, "keys") for layer in layers)


class PromptCache:
    """The KV cache of one row's last sequence, for the next call whose prompt shares a prefix with it."""

    def __init__(self) -> None:
        self.key: Any = None
        self.ids: list[int] = []
        self.cache: Any = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"PromptCache(tokens={len(self.ids)})"

    def __len__(self) -> int:
        return len(self.ids) if self.cache is not None else 0

    def clear(self) -> None:
        with self._lock:
            self.key, self.ids, self.cache = None, [], None

    def take(self, key: Any, ids: list[int]) -> tuple[Any, int]:
        """``(cache, n)``: the held cache cropped to the first ``n`` ids it shares with ``ids`` (at most all but the
        last id: one token must be fed for the next logits), or ``(None, 0)``. The entry is emptied; the generator
        sets it again with :meth:`keep` after its forwards."""
        with self._lock:
            cache, held, same = self.cache, self.ids, self.key == key
            self.key, self.ids, self.cache = None, [], None
        if cache is None or not same:
            return None, 0
        n = min(_shared_prefix(held, ids), len(ids) - 1, cache.get_seq_length())
        if n <= 0 or not croppable(cache):
            return None, 0
        remove = cache.get_seq_length() - n
        if remove > 0:
            cache.crop(-remove)  # transformers 5 takes the number of tokens to remove, negative
        return cache, n

    def keep(self, key: Any, ids: list[int], cache: Any) -> None:
        """Hold ``cache``, computed over ``ids`` (its length must equal ``len(ids)``)."""
        with self._lock:
            if cache is None or cache.get_seq_length() != len(ids):
                self.key, self.ids, self.cache = None, [], None
            else:
                self.key, self.ids, self.cache = key, ids, cache

    def drop(self) -> None:
        """Forget the entry while a forward changes the cache it holds."""
        with self._lock:
            self.key, self.ids, self.cache = None, [], None
