"""eval: multiple-choice benchmark runner (Kaggle LLM Science Exam layout), option scoring, MAP@3, reports; free-form
open-domain QA (``eval qa``: ``eval/qa.py`` runner, ``eval/answers.py`` metrics, ``eval/baseline.py`` HF baselines).

Option scoring is reusable: ``from asymmetry.eval import score_options``; so are the answer metrics:
``from asymmetry.eval import score_answer, qa_metrics``.
"""

from __future__ import annotations

from asymmetry.eval.answers import qa_metrics, score_answer
from asymmetry.eval.metrics import PRIMARY_METRIC, average_precision_at_k, mc_metrics
from asymmetry.eval.scoring import OptionScores, score_batch, score_options, score_options_naive

__all__ = [
    "PRIMARY_METRIC",
    "OptionScores",
    "average_precision_at_k",
    "mc_metrics",
    "qa_metrics",
    "score_answer",
    "score_batch",
    "score_options",
    "score_options_naive",
]
