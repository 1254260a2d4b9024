"""The committed default adapters are real: each beats its bare base on validation data of its own domain.

Scored by option log-likelihood with base and expert rows in the same batches (``compare_expert``), on a seeded
subset of each validation split. Only the sets with a wide margin in the full comparison (README) are used here, so a
pass is not luck and a regressed or corrupt adapter fails.
"""

from __future__ import annotations

import pytest

from asymmetry.eval.compare import compare_expert
from asymmetry.experts import ExpertRegistry, ExpertsConfig


@pytest.fixture(scope="module")
def registry(pool):
    """The small line-up's LoRA experts on the session's shared bases (adapters are named per row, so sharing is
    safe)."""
    return ExpertRegistry.from_config(ExpertsConfig(lineup="small"), pool=pool)


@pytest.mark.parametrize("expert, dataset", [("science", ("sciq", "validation:eval")),
                                             ("commonsense", ("commonsense_qa", "validation"))])
def test_smollm2_expert_beats_its_base(registry, expert, dataset):
    (row,) = compare_expert(registry, expert, datasets=[dataset], limit=100, progress=False)
    assert row["n"] == 100
    assert row["expert_accuracy"] > row["base_accuracy"], row
    assert row["gold_prob_gain"] > 2 * row["gold_prob_gain_se"], row  # paired: more than two standard errors
    assert row["only_expert_right"] > row["only_base_right"], row


@pytest.mark.slow
def test_scholar_beats_its_base_on_mmlu(registry):
    # the README's n = 200 (about 12 minutes on 2 cores): at fewer questions +0.045 is within two standard errors
    (row,) = compare_expert(registry, "scholar", datasets=[("mmlu", "validation:eval")], limit=200, progress=False)
    assert row["style"] == "cloze"
    assert row["expert_accuracy"] > row["base_accuracy"], row
    assert row["gold_prob_gain"] > 2 * row["gold_prob_gain_se"], row
