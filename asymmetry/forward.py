"""Running a causal LM forward over batches of rows (ground floor; used by decoding, option scoring and training).

Rows of different lengths are LEFT padded so that every row ends at the last column; an attention mask hides the
padding and explicit position ids count real tokens only, so a padded row is computed exactly like the unpadded one.

Shapes: B rows, T padded length.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


def left_pad(rows: list[list[int]], pad_id: int, device: Any = None
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask, position_ids)``, each (B, T), for left-padded ``rows``."""
    import torch  # heavy: this module is imported by packages whose import must stay light (the CLI's)

    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)  # (B, T)
    mask = torch.zeros((len(rows), width), dtype=torch.long)  # (B, T)
    for i, r in enumerate(rows):
        if r:
            ids[i, width - len(r):] = torch.tensor(r)
            mask[i, width - len(r):] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # (B, T)
    if device is not None:
        ids, mask, positions = ids.to(device), mask.to(device), positions.to(device)
    return ids, mask, positions


def forward_params(model: Any) -> dict[str, str | None]:
    """The keywords this model's forward takes for a KV cache (``cache`` in recent transformers 5.x,
    ``past_key_values`` before) and for keeping only the last logits (``logits_to_keep`` or None)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # a peft wrapper forwards kwargs
    params = inspect.signature(base.forward).parameters
    return {"cache": "cache" if "cache" in params else "past_key_values",
            "keep": "logits_to_keep" if "logits_to_keep" in params else None}


def output_cache(out: Any, cache_kw: str) -> Any:
    """The KV cache a forward returned, under either keyword."""
    return getattr(out, "cache", None) if cache_kw == "cache" else out.past_key_values
