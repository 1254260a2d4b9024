"""Pack ranked passages into a prompt's token budget, numbered for citation."""

from __future__ import annotations

from collections.abc import Sequence

from asymmetry.errors import AsymmetryError
from asymmetry.retrieval.retriever import Passage


def format_passage(number: int, passage: Passage) -> str:
    return f"[{number}] {passage.title}\n{passage.text}"


def pack_passages(passages: Sequence[Passage], tokenizer, max_tokens: int) -> tuple[str, list[Passage]]:
    """Greedily pack passages in rank order into at most ``max_tokens`` tokens of ``tokenizer``.

    Each passage becomes ``[n] Title\\ntext``; blocks are separated by a blank line. A passage that does not fit is
    skipped and later (shorter) ones are still tried, so the budget is used but rank order is kept. Returns the
    packed text and the passages used (``[n]`` refers to ``used[n - 1]``).
    """
    if not isinstance(max_tokens, int) or max_tokens < 1:
        raise AsymmetryError(f"invalid max_tokens={max_tokens!r}: pass a positive token budget such as 1024")
    used: list[Passage] = []
    blocks: list[str] = []
    total = 0
    sep = len(tokenizer.encode("\n\n", add_special_tokens=False))
    for passage in passages:
        block = format_passage(len(used) + 1, passage)
        cost = len(tokenizer.encode(block, add_special_tokens=False)) + (sep if blocks else 0)
        if total + cost > max_tokens:
            continue
        blocks.append(block)
        used.append(passage)
        total += cost
    text = "\n\n".join(blocks)
    return text, used
