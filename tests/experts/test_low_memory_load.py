"""Weight-only layers next to float ones: upcasting leaves the quantized layers alone; the 1.5B loaded straight into
int8 from its GGUF is the float32 load quantized afterwards, without the float32 copy."""

from __future__ import annotations

import pytest
import torch

from asymmetry.experts.base import Placement, load_model
from asymmetry.experts.quantize import _WeightOnlyLinear, quantize_model, upcast_unquantized


def test_upcast_leaves_the_weight_only_layers_and_casts_the_rest():
    model = load_model("smollm2", Placement(dtype="bfloat16", quantize="none")).model
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


@pytest.mark.slow  # two copies of the 1.5B (about 10 GB at once) and two loads
def test_the_int8_load_of_the_1_5b_equals_quantizing_the_float32_load():
    loaded = load_model("qwen2.5-coder-1.5b", Placement(quantize="int8"))
    reference = load_model("qwen2.5-coder-1.5b", Placement(quantize="none")).model
    quantize_model(reference, "int8")
    ids = loaded.tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.inference_mode():
        torch.testing.assert_close(loaded.model(ids).logits, reference(ids).logits, rtol=0, atol=0)
