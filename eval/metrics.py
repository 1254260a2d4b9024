"""Multiple-choice metrics, the one module for them.

- Ranking metrics of a benchmark run (``eval mc``): MAP@k (Kaggle's LLM Science Exam metric) and accuracy of the
  top prediction, primary ``map@3``. With one correct answer per question, average precision at k is ``1 / rank``
  of the answer when it is among the first k predictions and 0 otherwise; MAP@k is its mean over questions.
- Option log-likelihood metrics (``expert compare``): accuracy by mean log-prob per option token (primary), by sum,
  the gold option's probability, and paired expert-vs-base statistics.
"""

from __future__ import annotations

import math
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


# -- option log-likelihood metrics (expert vs base on validation questions) -----------------------------------------

OPTION_PRIMARY_METRIC = "accuracy"


def _per_question(answer: int, opts: Sequence[tuple[float, int]]) -> tuple[bool, bool, float]:
    """(right by mean log-prob per token, right by sum, softmax probability of the gold option over the sums)."""
    sums = [s for s, _ in opts]
    means = [s / max(n, 1) for s, n in opts]
    top = max(sums)
    gold = math.exp(sums[answer] - top) / sum(math.exp(s - top) for s in sums)
    return (max(range(len(means)), key=means.__getitem__) == answer,
            max(range(len(sums)), key=sums.__getitem__) == answer, gold)


def option_metrics(answers: Sequence[int], scores: Sequence[Sequence[tuple[float, int]]]) -> dict[str, float]:
    """Accuracy by mean log-prob per option token (primary), accuracy by sum, mean gold-option probability.

    ``answers[i]`` is question i's gold option index; ``scores[i]`` a ``(sum log-prob, n tokens)`` per option.
    """
    per = [_per_question(a, opts) for a, opts in zip(answers, scores)]
    n = max(len(per), 1)
    return {"accuracy": sum(p[0] for p in per) / n, "accuracy_sum": sum(p[1] for p in per) / n,
            "gold_prob": sum(p[2] for p in per) / n, "n": float(len(per))}


def paired_accuracy(answers: Sequence[int], a: Sequence[Sequence[tuple[float, int]]],
                    b: Sequence[Sequence[tuple[float, int]]]) -> tuple[float, float]:
    """System a vs system b on the SAME questions, by primary accuracy: the mean per-question difference (+1 only a
    right, -1 only b right, 0 otherwise) and its paired standard error (sample std / sqrt(n))."""
    return _mean_se([float(_per_question(g, x)[0]) - float(_per_question(g, y)[0]) for g, x, y in zip(answers, a, b)])


def _mean_se(diffs: Sequence[float]) -> tuple[float, float]:
    """The mean of paired differences and its standard error (sample std / sqrt(n))."""
    n = len(diffs)
    mean = sum(diffs) / max(n, 1)
    var = sum((d - mean) ** 2 for d in diffs) / max(n - 1, 1)
    return mean, math.sqrt(var / max(n, 1))


def paired_option_stats(answers: Sequence[int], expert: Sequence[Sequence[tuple[float, int]]],
                        base: Sequence[Sequence[tuple[float, int]]]) -> dict[str, float]:
    """Expert vs base on the SAME questions: the mean gain in gold-option probability with its standard error (the
    paired differences' sample std / sqrt(n)), and how many questions only the expert / only the base gets right
    (primary accuracy; a sign test on these two counts is McNemar's test)."""
    diffs, only_expert, only_base = [], 0, 0
    for a, e, b in zip(answers, expert, base):
        pe, pb = _per_question(a, e), _per_question(a, b)
        diffs.append(pe[2] - pb[2])
        only_expert += pe[0] and not pb[0]
        only_base += pb[0] and not pe[0]
    mean, se = _mean_se(diffs)
    return {"gold_prob_gain": mean, "gold_prob_gain_se": se,
            "only_expert_right": only_expert, "only_base_right": only_base}
