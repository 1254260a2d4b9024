"""Weight-only int8 linear layers (torch's int8 kernel): close to the float model, LoRA still applied per row."""

from __future__ import annotations

import pytest
import torch

from asymmetry.errors import AsymmetryError
from asymmetry.experts import ModelPool, Placement, load_model
from asymmetry.experts.config import adapters_package_dir
from asymmetry.experts.quantize import Int8Linear, quantize_model

PROMPT = "Rome is the capital of Italy, Madrid is the capital of Spain, and the capital of France is"  # > 16 tokens: one kernel


def test_int8_linear_matches_float_linear_for_decode_and_prefill():
    torch.manual_seed(0)
    dense = torch.nn.Linear(256, 512)
    q = Int8Linear(dense.weight, dense.bias)
    for rows in (1, 64):  # the int8 kernel (decode) and the dequantised GEMM (prefill)
        x = torch.randn(rows, 256)
        ref, got = dense(x), q(x)
        assert got.dtype == x.dtype and got.shape == ref.shape
        torch.testing.assert_close(got, ref, atol=0.05, rtol=0.05)


def test_int8_smollm2_keeps_its_next_token_and_lora_rows(smollm):
    pool = ModelPool()
    base = pool.base("smollm2", Placement(quantize="int8"))
    assert sum(isinstance(m, Int8Linear) for m in base.loaded.model.modules()) > 100
    tok = smollm.tokenizer
    ids = tok(PROMPT, return_tensors="pt").input_ids  # (1, T)
    with torch.no_grad():
        ref = smollm.model(ids).logits[0, -1]  # (V,)
        got = base.model(ids).logits[0, -1]
    assert got.argmax() == ref.argmax()
    science = base.handle("science", adapters_package_dir() / "science")  # peft wraps the int8 layers
    two = ids.repeat(2, 1)  # (2, T): the adapter on row 0, the bare base on row 1
    with torch.no_grad():
        out = base.model(two, adapter_names=["science", "__base__"]).logits[:, -1]  # (2, V)
        adapted = base.model(ids, **science.forward_kwargs(1)).logits[0, -1]
    torch.testing.assert_close(out[1], got, atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(out[0], adapted, atol=1e-3, rtol=1e-3)
    assert (out[0] - out[1]).abs().max() > 1e-3  # the adapter changes the logits


def test_auto_keeps_small_bases_in_float_and_bad_modes_are_refused():
    loaded = load_model("smollm2", Placement(quantize="auto"))  # 135M parameters: below the 1B threshold
    assert not any(isinstance(m, Int8Linear) for m in loaded.model.modules())
    with pytest.raises(AsymmetryError, match="quantize"):
        load_model("smollm2", Placement(quantize="int3"))
    with pytest.raises(ValueError, match="int8"):
        quantize_model(torch.nn.Linear(2, 2), "int4")
