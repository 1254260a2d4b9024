"""eval: multiple-choice benchmark runner (Kaggle LLM Science Exam layout), option scoring, MAP@3, reports.

Option scoring is reusable: ``from asymmetry.eval import score_options``.
"""

from __future__ import annotations

from asymmetry.eval.metrics import PRIMARY_METRIC, average_precision_at_k, mc_metrics
from asymmetry.eval.scoring import OptionScores, score_batch, score_options, score_options_naive

__all__ = [
    "PRIMARY_METRIC",
    "OptionScores",
    "average_precision_at_k",
    "mc_metrics",
    "score_batch",
    "score_options",
    "score_options_naive",
]
