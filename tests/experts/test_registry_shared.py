"""Two registries in one process (the assistant's and the evaluator's) share one wrapped base without re-wrapping it."""

from __future__ import annotations

import torch
from asymmetry.experts import ExpertRegistry


def test_second_registry_reuses_the_shared_peft_model():
    first = ExpertRegistry.from_config()
    model_a, tokenizer = first.model_for("science")
    ids = tokenizer("Photosynthesis turns light into", return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        science_logits = model_a(input_ids=ids).logits[0, -1]

    second = ExpertRegistry.from_config()
    model_b, _ = second.model_for("science")
    assert model_b is model_a
    with torch.inference_mode():
        torch.testing.assert_close(model_b(input_ids=ids).logits[0, -1], science_logits)
        second.model_for("general")
        bare_logits = model_b(input_ids=ids).logits[0, -1]
    assert not torch.allclose(bare_logits, science_logits), "the general expert must run the bare base"
