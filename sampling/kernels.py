"""A CPU matmul layout for decode steps of a few rows (CFG, adapter mixtures, small prompt batches).

``torch.nn.functional.linear`` computes ``x @ W.T`` with the weight stored row-major as ``(out, in)``. On CPU,
MKL's GEMM for that "B transposed" layout is poor when ``x`` has 2-16 rows: a 2-row product costs about twice a
1-row GEMV and a 4-row one up to five times (measured on this project's 2-core machine, 262 MB weight: 1 row
20 ms, 2 rows 43 ms, 4 rows 106 ms). Computing the same product as ``(W @ x.T).T`` hands MKL a no-transpose
weight and costs 27 ms for 2 rows and 25 ms for 4. A decode step streams every weight once, so this turns a
2-row CFG step from ~1.5x into ~1.2x a plain step.

:class:`SmallBatchLinear` is a torch function mode that reroutes exactly those calls (2-D product of 2-16 rows,
float32, CPU, no autograd) and leaves every other call alone. The generator enters it only around decode
forwards of 2 or more rows, so the single-row path, prefill and training are untouched. The results equal
``F.linear``'s up to float summation order.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

MIN_ROWS = 2
MAX_ROWS = 16


class SmallBatchLinear(TorchFunctionMode):
    """Within this mode, ``F.linear`` over 2-16 rows on CPU float32 runs as ``(W @ x.T).T``."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.linear:
            out = _small_linear(*args, **kwargs)
            if out is not None:
                return out
        return func(*args, **kwargs)


def _small_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor | None:
    if (x.device.type != "cpu" or x.dtype != torch.float32 or weight.dtype != torch.float32 or weight.dim() != 2
            or weight.device.type != "cpu" or torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)):
        return None
    rows = x.numel() // x.shape[-1] if x.dim() else 0
    if not MIN_ROWS <= rows <= MAX_ROWS:
        return None
    flat = x.reshape(rows, x.shape[-1])  # (M, in)
    y = torch.mm(weight, flat.t()).t()  # (M, out)
    if bias is not None:
        y = y + bias
    return y.reshape(*x.shape[:-1], weight.shape[0])


def wants_small_batch(n_rows: int, device: torch.device, dtype: torch.dtype | None) -> bool:
    """Whether a decode forward of ``n_rows`` rows on ``device`` benefits from :class:`SmallBatchLinear`."""
    return MIN_ROWS <= n_rows <= MAX_ROWS and device.type == "cpu" and dtype in (None, torch.float32)
