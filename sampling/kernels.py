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

Not every CPU's GEMM has that weakness. On the AVX512-BF16 + AMX machine kind a 2-row ``F.linear`` cost what a
1-row one did (SmolLM2's head: 3.0 against 3.1 ms) and the rerouted layout 3.2x more (10.1 ms): CFG decoding took
2.28x a plain step with the mode against about 1x without it. So whether the mode runs is measured once per process
(:func:`transposed_layout_helps`: both layouts on a 4096 x 1024 weight, about 20 ms).
"""

from __future__ import annotations

import logging
import time

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

log = logging.getLogger(__name__)

MIN_ROWS = 2
MAX_ROWS = 16
PROBE_SHAPE = (4096, 1024)  # the weight of the one-time layout measurement (16 MB of float32)
_MEASURED: dict[str, bool] = {}  # "helps": the measurement's verdict, once per process


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
    return (MIN_ROWS <= n_rows <= MAX_ROWS and device.type == "cpu" and dtype in (None, torch.float32)
            and transposed_layout_helps())


def transposed_layout_helps() -> bool:
    """Whether this CPU multiplies 2 rows by a float32 weight faster as ``(W @ x.T).T`` than as ``F.linear`` (by at
    least 20%): measured at the first call, at the thread count of that moment, then kept for the process."""
    if "helps" not in _MEASURED:
        linear_s, transposed_s = _time_layouts()
        _MEASURED["helps"] = transposed_s < 0.8 * linear_s
        log.debug("2-row float32 product: F.linear %.3f ms, (W @ x.T).T %.3f ms: small-batch layout %s",
                  linear_s * 1e3, transposed_s * 1e3, "on" if _MEASURED["helps"] else "off")
    return _MEASURED["helps"]


def _time_layouts(repeats: int = 5) -> tuple[float, float]:
    """Best-of-``repeats`` seconds of a 2-row product with ``F.linear`` and with ``(W @ x.T).T``."""
    with torch.no_grad():
        weight = torch.full(PROBE_SHAPE, 0.01)  # (out, in)
        x = torch.full((MIN_ROWS, PROBE_SHAPE[1]), 0.5)  # (2, in)

        def best(fn) -> float:
            fn()  # warm-up
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                fn()
                times.append(time.perf_counter() - start)
            return min(times)

        return best(lambda: F.linear(x, weight)), best(lambda: torch.mm(weight, x.t()).t())
