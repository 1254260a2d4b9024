"""The small-batch linear layout gives F.linear's results and only takes the calls it is meant for."""

import pytest
import torch
import torch.nn.functional as F

from asymmetry.sampling.kernels import SmallBatchLinear, _small_linear, wants_small_batch


@pytest.mark.parametrize("rows", [1, 2, 3, 8, 16, 17])
def test_matches_linear(rows):
    gen = torch.Generator().manual_seed(rows)
    x = torch.randn(rows, 1, 96, generator=gen)
    w = torch.randn(200, 96, generator=gen)
    b = torch.randn(200, generator=gen)
    with torch.inference_mode():
        ref = F.linear(x, w, b)
        with SmallBatchLinear():
            got = F.linear(x, w, b)
            got_nobias = F.linear(x, w)
    assert got.shape == ref.shape == (rows, 1, 200)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(got_nobias, ref - b, rtol=1e-5, atol=1e-4)
    taken = _small_linear(x, w, b) is not None
    assert taken == (2 <= rows <= 16)


def test_leaves_autograd_and_other_dtypes_alone():
    x = torch.randn(4, 32, requires_grad=True)
    w = torch.randn(8, 32, requires_grad=True)
    assert _small_linear(x, w) is None  # training keeps torch's own kernel
    assert _small_linear(x.detach().double(), w.detach().double()) is None
    with SmallBatchLinear():
        y = F.linear(x, w)
    y.sum().backward()
    assert x.grad is not None and w.grad is not None


def test_wants_small_batch(monkeypatch):
    from asymmetry.sampling import kernels

    cpu = torch.device("cpu")
    monkeypatch.setitem(kernels._MEASURED, "helps", True)  # a CPU whose GEMM is slow for 2-16 rows (AVX2 kind)
    assert wants_small_batch(2, cpu, torch.float32)
    assert wants_small_batch(16, cpu, torch.float32)
    assert not wants_small_batch(1, cpu, torch.float32)
    assert not wants_small_batch(17, cpu, torch.float32)
    assert not wants_small_batch(2, cpu, torch.bfloat16)
    assert not wants_small_batch(2, torch.device("meta"), torch.float32)
    monkeypatch.setitem(kernels._MEASURED, "helps", False)  # one whose F.linear is as fast (AVX512 + AMX kind)
    assert not wants_small_batch(2, cpu, torch.float32)


@pytest.mark.parametrize("linear_s, transposed_s, helps", [
    (0.043, 0.027, True),  # the AVX2 machine's 2-row product (ms as s): rerouting 1.6x faster
    (0.0030, 0.0101, False),  # the AVX512 + AMX machine's: rerouting 3.2x slower
    (0.010, 0.0085, False),  # rerouting faster, but within the 20% margin
])
def test_the_layout_choice_follows_the_measurement_and_is_made_once(monkeypatch, linear_s, transposed_s, helps):
    """The verdict is the measured faster layout (rerouting needs a 20% margin), measured once and kept; the timing
    itself (no wall-clock assertion) is checked to measure both layouts."""
    from asymmetry.sampling import kernels

    monkeypatch.setattr(kernels, "_MEASURED", {})
    calls = []

    def timed():
        calls.append(1)
        return linear_s, transposed_s

    monkeypatch.setattr(kernels, "_time_layouts", timed)
    assert kernels.transposed_layout_helps() is helps
    assert kernels.transposed_layout_helps() is helps and len(calls) == 1
    assert wants_small_batch(2, torch.device("cpu"), torch.float32) is helps


def test_the_layout_probe_times_both_layouts():
    from asymmetry.sampling import kernels

    linear_s, transposed_s = kernels._time_layouts(repeats=2)
    assert linear_s > 0 and transposed_s > 0  # seconds of each layout (their values are the machine's, not asserted)
