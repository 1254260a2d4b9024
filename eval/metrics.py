"""Multiple-choice metrics: MAP@k (Kaggle's LLM Science Exam metric) and accuracy.

With one correct answer per question, average precision at k is ``1 / rank`` of the answer when it is among the
first k predictions and 0 otherwise; MAP@k is its mean over questions.
"""

from __future__ import annotations

from collections.abc import Sequence

PRIMARY_METRIC = "map@3"


def average_precision_at_k(ranked: Sequence[str], answer: str, k: int = 3) -> float:
    """Average precision at ``k`` for one question with a single correct ``answer``; duplicates count once."""
    seen: list[str] = []
    for letter in ranked:
        if letter not in seen:
            seen.append(letter)
        if len(seen) == k:
            break
    return 1.0 / (seen.index(answer) + 1) if answer in seen else 0.0


def mc_metrics(ranked: Sequence[Sequence[str]], answers: Sequence[str], k: int = 3) -> dict[str, float]:
    """``{"map@3", "accuracy", "n"}`` over the questions that have an answer; the primary metric is ``map@3``."""
    pairs = [(r, a) for r, a in zip(ranked, answers) if a]
    if not pairs:
        return {f"map@{k}": float("nan"), "accuracy": float("nan"), "n": 0.0}
    ap = [average_precision_at_k(r, a, k) for r, a in pairs]
    acc = [1.0 if r and r[0] == a else 0.0 for r, a in pairs]
    return {f"map@{k}": sum(ap) / len(ap), "accuracy": sum(acc) / len(acc), "n": float(len(pairs))}
