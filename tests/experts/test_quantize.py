"""Weight-only int8 and int4 linear layers (torch's kernels): close to the float model, LoRA still applied per row."""

from __future__ import annotations

import pytest
import torch

from asymmetry.errors import AsymmetryError
from asymmetry.experts import ModelPool, Placement, load_model
from asymmetry.experts.config import adapters_package_dir
from asymmetry.experts.quantize import (
    DECODE_ROWS,
    INT4_KERNEL_ROWS,
    Int4Linear,
    Int8Linear,
    _int4_layout,
    quantize_model,
)

PROMPT = "Rome is the capital of Italy, Madrid is the capital of Spain, and the capital of France is"  # > 16 tokens: one kernel


def test_int8_linear_matches_float_linear_for_decode_and_prefill():
    torch.manual_seed(0)
    dense = torch.nn.Linear(256, 512)
    q = Int8Linear(dense.weight, dense.bias)
    for rows in (1, DECODE_ROWS + 8):  # the int8 kernel (decode, short prefills) and the dequantised GEMM (prefill)
        x = torch.randn(rows, 256)
        ref, got = dense(x), q(x)
        assert got.dtype == x.dtype and got.shape == ref.shape
        torch.testing.assert_close(got, ref, atol=0.05, rtol=0.05)


def test_int4_linear_matches_its_dequantized_weight_for_decode_and_prefill():
    torch.manual_seed(0)
    dense = torch.nn.Linear(256, 192)  # K = 4 groups of 64; N = 3 x 64: full blocks of torch's layout
    q = Int4Linear(dense.weight, dense.bias)
    assert _int4_layout() is not None, "torch's packed int4 layout is not the one we unpack (prefills would be slow)"
    deq = q.dequantized().float()  # (N, K)
    assert (deq - dense.weight).abs().max() < dense.weight.abs().max() / 10  # about half a step (bf16 scale and zero)
    for rows in (1, 5, INT4_KERNEL_ROWS + 72):  # the int4 kernel (decode), and unpack + bf16 GEMM (prefill)
        x = torch.randn(rows, 256)
        ref = x @ deq.t() + dense.bias  # (M, N)
        got = q(x)
        assert got.dtype == x.dtype and got.shape == ref.shape
        torch.testing.assert_close(got, ref, atol=0.03, rtol=0.02)  # bf16 activations


def test_int4_odd_shapes_use_group_32_tail_blocks_or_int8():
    torch.manual_seed(1)
    odd = torch.nn.Linear(96, 80)  # K = 3 x 32: group 32; N = 64 + 16: a partial last block
    q = Int4Linear(odd.weight, None)
    assert q.group == 32
    x = torch.randn(3, 96)
    torch.testing.assert_close(q(x), x @ q.dequantized().float().t(), atol=0.03, rtol=0.02)
    model = torch.nn.Sequential(torch.nn.Linear(96, 80), torch.nn.Linear(80, 40))  # N = 40: not for the int4 kernel
    assert quantize_model(model, "int4") == 2
    assert isinstance(model[0], Int4Linear) and isinstance(model[1], Int8Linear)


@pytest.mark.parametrize("mode, layer", [("int8", Int8Linear), ("int4", Int4Linear)])
def test_quantized_smollm2_keeps_its_next_token_and_lora_rows(smollm, mode, layer):
    pool = ModelPool()
    base = pool.base("smollm2", Placement(quantize=mode))
    assert sum(isinstance(m, layer) for m in base.loaded.model.modules()) > 100
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
    with pytest.raises(ValueError, match="int4"):
        quantize_model(torch.nn.Linear(2, 2), "int3")


def test_quantize_flag_before_or_after_the_command_overrides_the_config():
    from asymmetry import cli
    from asymmetry.experts.config import ExpertsConfig

    parser = cli.build_parser()
    assert parser.parse_args(["ask", "q"]).quantize is None  # the config's [experts] quantize
    assert parser.parse_args(["ask", "q", "--quantize", "int4"]).quantize == "int4"
    assert parser.parse_args(["--quantize", "int8", "eval", "mc", "x.csv"]).quantize == "int8"
    assert parser.parse_args(["generate", "p", "--quantize", "none"]).quantize == "none"
    assert ExpertsConfig(quantize="int4").quantize == "int4"
