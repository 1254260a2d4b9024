"""Weight-only int8 linear layers for CPU decoding, on torch's own kernel (``torch._weight_int8pack_mm``).

Every decode step streams every weight once, so bytes per weight set the speed. A linear layer's weight is stored as
int8 with one scale per output channel (symmetric, absmax / 127); activations stay in the model's float dtype.

* one or a few tokens per row (decode): ``_weight_int8pack_mm`` in bfloat16 — measured on this 2-core AVX512-BF16
  machine 2.1 ms for an 8960 x 1536 weight against 8.0 ms in bf16 and 5.0 ms in fp32;
* many tokens (prefill): the weight is dequantised to bfloat16 for that one call and multiplied with a bf16 GEMM
  (the int8 kernel is 4x slower than a bf16 GEMM at 500 tokens).

The module subclasses :class:`torch.nn.Linear`, so peft wraps it like any linear layer and LoRA adapters still apply
per row on top (their weights stay float: peft never casts an adapter to an integer base dtype).

Shapes: M rows of input (batch x tokens), K input features, N output features.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

log = logging.getLogger(__name__)

QUANTIZE_MODES = ("none", "int8")
DECODE_ROWS = 16  # at most this many input rows use the int8 kernel; more are a prefill (dequantised bf16 GEMM)
SKIP = ("lm_head",)  # kept in float: tied to the input embedding in most small models, and it sets the logits


class Int8Linear(nn.Linear):
    """A linear layer with an int8 weight (N, K) and a float scale per output channel (N,)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        nn.Module.__init__(self)
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]
        w = weight.detach().float()  # (N, K)
        scale = (w.abs().amax(dim=1) / 127.0).clamp_min(1e-12)  # (N,)
        q = torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8).contiguous()  # (N, K)
        self.weight = nn.Parameter(q, requires_grad=False)
        self.register_buffer("scale", scale.to(torch.bfloat16))
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)
        self.compute_dtype = weight.dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape, dtype = x.shape, x.dtype
        x2 = x.reshape(-1, shape[-1]).to(torch.bfloat16)  # (M, K)
        if x2.shape[0] <= DECODE_ROWS:
            y = torch._weight_int8pack_mm(x2, self.weight, self.scale)  # (M, N)
        else:
            w = self.weight.to(torch.bfloat16) * self.scale[:, None]  # (N, K), this call only
            y = torch.nn.functional.linear(x2, w)  # (M, N)
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.to(dtype).reshape(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 weight-only"


def quantize_model(model: nn.Module, mode: str) -> int:
    """Replace every ``nn.Linear`` of ``model`` (except the output head) by an int8 weight-only layer, in place;
    return how many were replaced. ``mode="none"`` changes nothing. Needs a CPU with a ``_weight_int8pack_mm``
    kernel (any x86-64 build of torch 2.4+)."""
    if mode == "none":
        return 0
    if mode != "int8":
        raise ValueError(f"unknown quantize mode {mode!r}: use one of {', '.join(QUANTIZE_MODES)}")
    targets = [(name, module) for name, module in model.named_modules()
               if type(module) is nn.Linear and name.rsplit(".", 1)[-1] not in SKIP]
    for name, module in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, Int8Linear(module.weight, module.bias))
    log.info("int8 weight-only: %d linear layers", len(targets))
    return len(targets)
