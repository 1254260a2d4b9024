"""A bf16-stored base wanted in float32 with weight-only linears loads as stored, quantizes, then upcasts the rest:
the same model as loading float32 first, without the float32 copy of every linear."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from asymmetry.experts.base import Placement, load_model, resolve_model
from asymmetry.experts.quantize import _WeightOnlyLinear, quantize_model, upcast_unquantized


def test_upcast_leaves_the_weight_only_layers_and_casts_the_rest():
    _, path = resolve_model("smollm2")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).eval()
    quantize_model(model, "int8")
    upcast_unquantized(model, torch.float32)
    for module in model.modules():
        if isinstance(module, _WeightOnlyLinear):
            assert module.weight.dtype == torch.int8 and module.scale.dtype == torch.bfloat16
        else:
            assert all(p.dtype == torch.float32 for p in module.parameters(recurse=False))
    ids = torch.tensor([[1, 504, 3575, 282, 4649, 314]])
    with torch.inference_mode():
        assert torch.isfinite(model(ids).logits).all()


@pytest.mark.slow  # two copies of the 1.5B (about 14 GB at once) and two loads
def test_the_low_memory_load_of_the_1_5b_equals_the_float32_first_load():
    loaded = load_model("qwen2.5-coder-1.5b", Placement())  # the default placement: float32, int8 linears
    reference = AutoModelForCausalLM.from_pretrained(loaded.path, dtype=torch.float32).eval()
    quantize_model(reference, "int8")
    ids = loaded.tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.inference_mode():
        torch.testing.assert_close(loaded.model(ids).logits, reference(ids).logits, rtol=0, atol=0)
