"""Weight-only int8 and int4 linear layers for CPU decoding, on torch's own kernels (``torch._weight_int8pack_mm``,
``torch._weight_int4pack_mm_for_cpu``; opt-in: fbgemm's ``quantized.linear_dynamic``).

Every decode step streams every weight once, so bytes per weight set the speed. Activations stay in the model's float
dtype outside the layer; inside it they run in bfloat16 (the kernels' fast path; the timings below are from an
AVX512-BF16 machine).

* int8: one scale per output channel (symmetric, absmax / 127). Up to ``DECODE_ROWS`` rows (decode, a short prompt,
  a chat turn's suffix after KV reuse): ``_weight_int8pack_mm`` — measured on this 2-core machine 2.1 ms for an
  8960 x 1536 weight against 8.0 ms in bf16 and 5.0 ms in fp32. More rows (a long prefill): the weight is dequantised
  to bfloat16 for that one call and multiplied with a bf16 GEMM (float32 on a CPU without AVX512-BF16 or AMX, where
  bf16 GEMMs are emulated: :func:`prefill_dtype`) (the int8 kernel is 4x slower than a bf16 GEMM at 500
  tokens). Dequantising every linear of the 1.5B costs about 3.5 s a call, so the kernel wins up to an estimated 140 rows: a
  prefill of 19 / 43 / 80 tokens on the 1.5B took 4.7 / 3.6 / 3.5 s with the kernel up to 16 rows and 0.77 / 1.5 /
  2.6 s up to 128 (``benchmarks/quantize_decode.py --int8-rows 16,64,128``).
* int8, opted into with ``ASYMMETRY_INT8_KERNEL=dynamic``: a short input runs fbgemm's int8 x int8 kernel instead,
  on the same int8 weight and scales, each row's activations quantized on their own (:func:`int8_decode_kernel`:
  4.5x faster per layer on an AVX2-only CPU, where bf16 activations are emulated, but a larger next-token error;
  why it is not the default is there). fbgemm packs its own copy of the weight at the first decode call. An output
  head keeps the weight-only kernel: its logits stay bf16-precise.
* int4: asymmetric, a scale and a zero point per group of ``INT4_GROUP`` input features (about 4.5 bits a weight), in
  torch's packed layout (``_convert_weight_to_int4pack_for_cpu``). Up to ``INT4_KERNEL_ROWS`` rows: the int4 kernel
  (0.37 ms for that 8960 x 1536 weight at one row against 0.42 ms for int8, same run); more rows: the weight is
  unpacked and dequantised to bfloat16 (or float32, as for int8) for that call (the int4 kernel is linear in rows: 137 ms at 500 rows against
  75 ms for unpack + bf16 GEMM). Unpacking reads torch's packed layout (blocks of 64 or 32 output rows, low nibbles the
  first half of a block; see aten's int4mm_kernel.cpp); the layout is checked once per process on a probe, and if it
  does not match, a prefill runs the int4 kernel instead. A GGUF's 4-bit blocks (Q4_K, Q4_1, Q4_0: 32 weights per
  scale) are already this format: they become int4 layers as they are, group 32, without requantization
  (``Int4Linear.from_quantized``, experts/gguf.py); "auto" holds a mostly-4-bit GGUF of 1B parameters or more so.
* the output head: int8 in both modes (``quantize_head``; ``Placement.quantize_head`` / ``[experts] quantize_head``
  turn it off). The 1.5B's float32 head (151,936 x 1,536) is 930 MB of what an int4 decode step reads; int8 is
  233 MB. Adding control tokens grows it in int8 (``Int8Linear.resized``: zero rows; no float copy). A head tied to
  the input embedding (SmolLM2) keeps the embedding float and decodes through an int8 copy of it
  (:class:`TiedInt8Head`): SmolLM2's float32 head was 113 MB of the 180 MB an int4 decode step read.

The modules subclass :class:`torch.nn.Linear`, so peft wraps them like any linear layer and LoRA adapters still apply
per row on top (their weights stay float: peft never casts an adapter to an integer base dtype).

Shapes: M rows of input (batch x tokens), K input features, N output features, G features per int4 group.
"""

from __future__ import annotations

import logging
import os

import torch
from torch import nn

log = logging.getLogger(__name__)

QUANTIZE_MODES = ("none", "int8", "int4")
DECODE_ROWS = 128  # at most this many input rows use the int8 kernel; more: dequantised bf16 GEMM (measured crossover)
INT4_GROUP = 64  # input features per int4 scale/zero group (32 where K is not a multiple of 64)
INT4_KERNEL_ROWS = 128  # at most this many rows use the int4 kernel; more: unpack + bf16 GEMM (measured crossover)
SKIP = ("lm_head",)  # the output head: not a plain linear of the loop below; quantize_head decides (int8 or float)


class _WeightOnlyLinear(nn.Linear):
    """What the int8 and int4 layers share: bf16 activations inside, the caller's dtype and shape outside."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape, dtype = x.shape, x.dtype
        y = self._matmul(x.reshape(-1, shape[-1]))  # (M, K) -> (M, N), each path in the dtype its kernel takes
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.to(dtype).reshape(*shape[:-1], self.out_features)

    def _matmul(self, x2: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class Int8Linear(_WeightOnlyLinear):
    """A linear layer with an int8 weight (N, K) and a float scale per output channel (N,)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, head: bool = False):
        nn.Module.__init__(self)
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]
        # An output head always decodes with the weight-only kernel: its logits pick the token, and the dynamic
        # kernel's 7-bit activations moved SmolLM2's (untied) logits by up to 0.3 and changed a greedy text after 10
        # tokens, where bf16 activations keep them within a few hundredths.
        self.head = head
        w = weight.detach().float()  # (N, K)
        scale = (w.abs().amax(dim=1) / 127.0).clamp_min(1e-12)  # (N,)
        q = torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8).contiguous()  # (N, K)
        self.weight = nn.Parameter(q, requires_grad=False)
        self.register_buffer("scale", scale.to(torch.bfloat16))
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)

    def _matmul(self, x2: torch.Tensor) -> torch.Tensor:
        if x2.shape[0] <= DECODE_ROWS:
            if not self.head and int8_decode_kernel() == "dynamic":
                return _dynamic_int8(x2.float(), self._packed())  # (M, N) float32
            return torch._weight_int8pack_mm(x2.to(torch.bfloat16), self.weight, self.scale)  # (M, N)
        dtype = prefill_dtype()
        w = self.weight.to(dtype) * self.scale.to(dtype)[:, None]  # (N, K), this call only
        return torch.nn.functional.linear(x2.to(dtype), w)  # (M, N)

    def _packed(self):
        """fbgemm's packed form of this weight (the same int8 values and scales), made at the first dynamic decode
        call; it holds another copy of the int8 weight (the 1.5B: 3.6 GB in RAM before its first decode, 4.9 after)."""
        key = (self.weight.data_ptr(), self.weight._version, self.scale.data_ptr())
        held = self.__dict__.get("_fbgemm")
        if held is not None and held[0] == key:
            return held[1]
        import warnings

        with warnings.catch_warnings():  # torch marks quantized tensors deprecated; the op itself is not
            warnings.simplefilter("ignore")
            scale = self.scale.double()
            q = torch._make_per_channel_quantized_tensor(self.weight.detach(), scale,
                                                         torch.zeros_like(scale, dtype=torch.long), 0)
            packed = torch.ops.quantized.linear_prepack(q, None)
        self.__dict__["_fbgemm"] = (key, packed)  # remade if the weight or scale is replaced or changed
        return packed

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.pop("_fbgemm", None)  # a C++ object: pickles and deep copies remake it at their first decode
        return state

    def resized(self, out_features: int) -> Int8Linear:
        """This layer grown to ``out_features`` output rows, in int8 (no float copy): its rows as they are, the new
        ones zero (their outputs exactly 0, the scale ``Int8Linear`` gives a zero row). How an untied int8 output head
        takes control tokens."""
        extra = out_features - self.out_features
        if extra < 0:
            raise ValueError(f"an int8 layer only grows: {self.out_features} rows, asked for {out_features}")
        layer = Int8Linear.__new__(Int8Linear)
        nn.Module.__init__(layer)
        layer.in_features, layer.out_features, layer.head = self.in_features, out_features, self.head
        w = self.weight.detach()
        layer.weight = nn.Parameter(torch.cat([w, w.new_zeros(extra, self.in_features)]), requires_grad=False)
        layer.register_buffer("scale", torch.cat([self.scale, self.scale.new_full((extra,), 1e-12)]))
        layer.bias = (None if self.bias is None else
                      nn.Parameter(torch.cat([self.bias.detach(), self.bias.new_zeros(extra)]), requires_grad=False))
        return layer

    def as_linear(self) -> nn.Linear:
        """This layer back as a float32 ``nn.Linear`` holding exactly q x scale (7 + 8 significant bits fit float32's
        24), so ``Int8Linear`` of its weight gives back the same int8 weight and scales (a row's absmax is 127 x its
        scale): how a quantized output head is resized for control tokens and quantized again."""
        out = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device="meta")
        out.weight = nn.Parameter(self.weight.float() * self.scale.float()[:, None], requires_grad=False)  # (N, K)
        if self.bias is not None:
            out.bias = nn.Parameter(self.bias.detach().float(), requires_grad=False)
        return out

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, int8 weight-only"
                + (", output head" if self.head else ""))


class TiedInt8Head(nn.Module):
    """An output head tied to the input embedding (SmolLM2), decoded through an int8 copy of that weight.

    ``weight`` stays the embedding's float parameter, so Hugging Face's tying, resizing and the control rows written
    into the embedding work as before. A short input (decode, up to ``DECODE_ROWS`` rows: the head sees one row a
    step) runs ``int8``, an output-head :class:`Int8Linear` made from the weight, remade when the weight is replaced
    or changed in place (its pointer, version, shape or dtype; :meth:`refresh` forces it); a longer one the float
    weight. The copy is a quarter of the float32 head (SmolLM2: 28 MB beside 113 MB), and a decode step reads it
    instead."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None, head: bool = True):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.head = True  # the signature of Int8Linear's, so add_control_tokens re-wraps either kind of head alike
        self.weight = weight if isinstance(weight, nn.Parameter) else nn.Parameter(weight, requires_grad=False)
        self.bias = bias
        self.refresh()

    def _key(self) -> tuple:
        w = self.weight
        try:
            version = w._version
        except RuntimeError:  # an inference tensor tracks no version: refresh() after changing it in place
            version = None
        return (w.data_ptr(), version, tuple(w.shape), w.dtype)

    def refresh(self) -> None:
        """Make the int8 copy again from the (float) weight."""
        with torch.no_grad():
            self.int8 = Int8Linear(self.weight, self.bias, head=True)
        self._made_from = self._key()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.numel() // max(1, x.shape[-1]) > DECODE_ROWS:
            return torch.nn.functional.linear(x, self.weight, self.bias)
        if self._key() != self._made_from:
            self.refresh()
        return self.int8(x)

    def as_linear(self) -> nn.Linear:
        """A plain ``nn.Linear`` on the same (tied) parameters: how the head is resized for control tokens."""
        out = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device="meta")
        out.weight = self.weight
        if self.bias is not None:
            out.bias = self.bias
        return out

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, tied to the input embedding"


class Int4Linear(_WeightOnlyLinear):
    """A linear layer with an int4 weight in torch's packed layout (N, K / 2) uint8 and a bf16 scale and zero point
    per group of G input features, ``scale_zeros`` (K / G, N, 2): w = (q - 8) * scale + zero, q in 0..15."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, group: int | None = None):
        n, k = weight.shape
        group = group or int4_group(n, k)
        if not group:
            raise ValueError(f"int4 needs N a multiple of 16 and K of 32, got a weight of {n} x {k}")
        q, scale_zeros = _int4_quantize(weight.detach().float(), group)  # (N, K) int32, (K/G, N, 2)
        self._hold(q, scale_zeros, group, bias)

    @classmethod
    def from_quantized(cls, q: torch.Tensor, scale_zeros: torch.Tensor, group: int,
                       bias: torch.Tensor | None = None) -> Int4Linear:
        """A layer from weights already in this format: q (N, K) integers in 0..15 and scale_zeros (K/G, N, 2) with
        w = (q - 8) * scale + zero — a GGUF's 4-bit blocks as they are (experts/gguf.py), with no requantization."""
        n, k = q.shape
        if n % 16 or k % group or group % 32:
            raise ValueError(f"int4 needs N a multiple of 16 and K of the group (32 or 64), got {n} x {k}, group {group}")
        layer = cls.__new__(cls)
        layer._hold(q.to(torch.int32), scale_zeros, group, bias)
        return layer

    def _hold(self, q: torch.Tensor, scale_zeros: torch.Tensor, group: int, bias: torch.Tensor | None) -> None:
        nn.Module.__init__(self)
        self.out_features, self.in_features = q.shape
        self.group = group
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.contiguous(), 1)  # (N, K/2) uint8, torch's layout
        self.weight = nn.Parameter(packed, requires_grad=False)
        self.register_buffer("scale_zeros", scale_zeros.to(torch.bfloat16))
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)

    def _matmul(self, x2: torch.Tensor) -> torch.Tensor:
        if x2.shape[0] <= INT4_KERNEL_ROWS or _int4_layout() is None:
            return torch._weight_int4pack_mm_for_cpu(x2.to(torch.bfloat16), self.weight, self.group, self.scale_zeros)  # (M, N)
        dtype = prefill_dtype()
        return torch.nn.functional.linear(x2.to(dtype), self.dequantized().to(dtype))  # (M, N)

    def dequantized(self) -> torch.Tensor:
        """The weight as bfloat16 (N, K), unpacked from torch's layout (for a prefill, and for tests)."""
        n, k, g = self.out_features, self.in_features, self.group
        layout = _int4_layout()
        if layout is None:
            raise RuntimeError("torch's int4 packed layout is not the one this module unpacks")
        q = _int4_unpack(self.weight, n, k, *layout)  # (N, K) uint8
        scale = self.scale_zeros[..., 0].t().unsqueeze(-1)  # (N, K/G, 1)
        zero = self.scale_zeros[..., 1].t().unsqueeze(-1)  # (N, K/G, 1)
        return q.view(n, k // g, g).to(torch.bfloat16).sub_(8).mul_(scale).add_(zero).view(n, k)  # (N, K)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int4 weight-only, group={self.group}"


def int4_group(n: int, k: int) -> int:
    """The int4 group size for an (N, K) weight: ``INT4_GROUP`` or 32 where K allows; 0 where the kernel cannot run
    (N not a multiple of 16, K not of 32)."""
    if n % 16:
        return 0
    return next((g for g in (INT4_GROUP, 32) if k % g == 0), 0)


def _int4_quantize(w: torch.Tensor, group: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Asymmetric min/max quantisation per group: q (N, K) int32 in 0..15 and scale_zeros (K/G, N, 2) float32, with
    zero = min + 8 * scale so that w ~ (q - 8) * scale + zero (the int4 kernel's convention)."""
    n, k = w.shape
    groups = w.reshape(n, k // group, group)  # (N, K/G, G)
    lo, hi = torch.aminmax(groups, dim=-1, keepdim=True)  # (N, K/G, 1) each
    scale = ((hi - lo) / 15).clamp_min(1e-8)  # (N, K/G, 1)
    zero = lo + 8 * scale
    q = (groups - lo).mul_(1 / scale).round_().clamp_(0, 15).to(torch.int32).reshape(n, k)  # (N, K)
    scale_zeros = torch.cat([scale, zero], dim=-1).transpose(0, 1).contiguous()  # (K/G, N, 2)
    return q, scale_zeros


def _int4_unpack(packed: torch.Tensor, n: int, k: int, block: int, lanes: bool) -> torch.Tensor:
    """torch's CPU int4 layout back to (N, K) uint8: output rows in blocks of ``block``, each block stored (K, block/2)
    bytes; with ``lanes`` a byte's low nibble is row j of the block and its high nibble row j + block/2 (AVX512 and AVX2
    kernels), otherwise rows 2j and 2j + 1 (the scalar kernel, and every partial last block)."""
    out = torch.empty(n, k, dtype=torch.uint8)
    full = (n // block) * block
    flat = packed.reshape(-1)
    if full:
        p = flat[: full * k // 2].reshape(full // block, k, block // 2)  # (N/B, K, B/2)
        lo, hi = (p & 15).transpose(1, 2), (p >> 4).transpose(1, 2)  # (N/B, B/2, K) each
        if lanes:
            out[:full] = torch.cat([lo, hi], dim=1).reshape(full, k)
        else:
            out[:full] = torch.stack([lo, hi], dim=2).reshape(full, k)
    if full < n:
        tail = n - full
        p = flat[full * k // 2:].reshape(k, tail // 2)  # (K, T/2)
        out[full:] = torch.stack([(p & 15).t(), (p >> 4).t()], dim=1).reshape(tail, k)
    return out


_PREFILL_DTYPE: list = []  # prefill_dtype's answer, once per process


def prefill_dtype() -> torch.dtype:
    """The dtype of a long input's GEMM after the weight is dequantised: bfloat16 where the CPU multiplies bf16 in
    hardware (AVX512-BF16 or AMX), else float32. Without those instructions a bf16 GEMM is emulated: on an AVX2-only
    2-core machine (AMD EPYC) a 1,000 x 1,536 by 1,536 x 8,960 product took 2.6 s in bf16 against 0.40 s in float32
    (dequantisation included, 1 thread), so a 1,000-token prefill of the 1.5B took minutes instead of seconds."""
    if not _PREFILL_DTYPE:
        cpu = torch.cpu
        fast = any(getattr(cpu, name, lambda: False)() for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))
        _PREFILL_DTYPE.append(torch.bfloat16 if fast else torch.float32)
        log.debug("int8/int4 prefill GEMMs in %s", _PREFILL_DTYPE[0])
    return _PREFILL_DTYPE[0]


OUTLIERS = 8  # the dynamic kernel: per row, this many largest-magnitude activations are quantized on their own


def _dynamic_int8(x: torch.Tensor, packed) -> torch.Tensor:
    """x (M, K) float32 times an fbgemm-packed int8 weight (N, K), activations quantized per row in one call.

    Each row is split into its ``OUTLIERS`` largest-magnitude entries and the rest, and each part is scaled to a
    largest magnitude of 1; a guard row holding +1 and -1 fixes the range fbgemm quantizes the whole input with to
    exactly [-1, 1]. So every part of every row gets its own 7-bit scale in one GEMM (the weight is read once), a
    few outlier channels no longer coarsen a row's other activations, and a row's output does not depend on the other
    rows. The parts' products are scaled back and summed. On the 1.5B, teacher-forced: next-token KL 0.0053 nats from
    the weight-only kernel with the split, 0.10-0.12 without (benchmarks/int8_dynamic_fidelity.py)."""
    m, k = x.shape
    idx = x.abs().topk(min(OUTLIERS, k), dim=1).indices  # (M, O)
    outliers = torch.zeros_like(x).scatter_(1, idx, x.gather(1, idx))  # (M, K)
    parts = torch.cat([x - outliers, outliers])  # (2M, K)
    scale = parts.abs().amax(dim=1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)  # (2M, 1)
    guard = torch.zeros(1, k)
    guard[0, 0], guard[0, min(1, k - 1)] = 1.0, -1.0
    y = torch.ops.quantized.linear_dynamic(torch.cat([parts / scale, guard]), packed, True)[:-1] * scale  # (2M, N)
    return y[:m] + y[m:]


INT8_DECODE_KERNELS = ("weight-only", "dynamic")
INT8_KERNEL_ENV = "ASYMMETRY_INT8_KERNEL"  # opt in to the dynamic kernel: ASYMMETRY_INT8_KERNEL=dynamic
INT8_DECODE: str | None = None  # one of INT8_DECODE_KERNELS to force it in this process (benchmarks, tests)


def int8_decode_kernel() -> str:
    """The kernel an int8 layer (not an output head) runs for a short input (decode, up to ``DECODE_ROWS`` rows):
    ``"weight-only"`` (``torch._weight_int8pack_mm``, bf16 activations; the default) or, opted into with
    ``ASYMMETRY_INT8_KERNEL=dynamic``, ``"dynamic"``: fbgemm's int8 x int8 linear (``torch.ops.quantized.
    linear_dynamic``), its activations quantized per row (7 bits, so AVX2's 16-bit accumulation cannot saturate;
    :func:`_dynamic_int8`), on the same int8 weight and scales; a row's output never depends on the other rows of
    its batch.

    On a CPU without bf16 hardware (AVX2 only), where the weight-only kernel's bf16 activations are emulated, fbgemm
    is much faster per layer: 0.46 ms against 2.07 ms (weight-only) and 1.95 ms (int4) for an 8,960 x 1,536 weight at
    one row, 1 thread. Quantizing activations costs fidelity, which the outlier split of :func:`_dynamic_int8`
    mostly buys back: teacher-forced on ~950 tokens of the 1.5B, next-token KL from the weight-only kernel 0.10-0.12 nats
    (top-1 agreement 89-92%) with plain per-row quantization, 0.0053 (97%) with the split, against 0.0024 (98%) between
    the int4 default and weight-only int8 (benchmarks/int8_dynamic_fidelity.py). It stays opt-in: its decode gain over
    int4 was measured only on a loaded machine (1.1-1.5x) and its answers not yet on the QA sets."""
    kernel = INT8_DECODE or os.environ.get(INT8_KERNEL_ENV) or "weight-only"
    if kernel not in INT8_DECODE_KERNELS:
        raise ValueError(f"unknown int8 decode kernel {kernel!r} ({INT8_KERNEL_ENV} or quantize.INT8_DECODE): use "
                         f"one of {', '.join(INT8_DECODE_KERNELS)}")
    if kernel == "dynamic" and not hasattr(torch.ops.quantized, "linear_dynamic"):
        raise RuntimeError(f"{INT8_KERNEL_ENV}=dynamic needs fbgemm's quantized.linear_dynamic, which this torch "
                           "build lacks: unset it")
    return kernel


_LAYOUT: list = []  # the layout found by _int4_layout (cached once per process): (block, lanes) or None


def _int4_layout() -> tuple[int, bool] | None:
    """Which of torch's CPU int4 layouts this process packs into (it follows the CPU's vector width), found once by
    packing a probe and unpacking it; None if none matches (a prefill then runs the int4 kernel)."""
    if not _LAYOUT:
        gen = torch.Generator().manual_seed(0)
        probe = torch.randint(0, 16, (176, 64), generator=gen, dtype=torch.int32)  # 2 x 64 + 48 rows: full and tail
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(probe, 1)
        found = None
        for layout in ((64, True), (32, True), (32, False), (64, False)):
            if torch.equal(_int4_unpack(packed, 176, 64, *layout).to(torch.int32), probe):
                found = layout
                break
        if found is None:
            log.warning("torch's int4 packed layout is not a known one: int4 prefills run the int4 kernel (slower)")
        _LAYOUT.append(found)
    return _LAYOUT[0]


def quantize_model(model: nn.Module, mode: str, head: bool = True) -> int:
    """Replace every ``nn.Linear`` of ``model`` (except the output head) by a weight-only int8 or int4 layer, in place;
    return how many were replaced. ``mode="none"`` changes nothing. int4 keeps int8 for a layer the int4 kernel cannot
    take (N not a multiple of 16 or K of 32). With ``head`` the output head also goes to int8 in both modes
    (:func:`quantize_head`; a head tied to the input embedding decodes through an int8 copy). Needs torch's CPU
    kernels ``_weight_int8pack_mm`` and ``_weight_int4pack_mm_for_cpu`` (x86-64 builds of torch 2.5+)."""
    if mode == "none":
        return 0
    if mode not in QUANTIZE_MODES:
        raise ValueError(f"unknown quantize mode {mode!r}: use one of {', '.join(QUANTIZE_MODES)}")
    targets = [(name, module) for name, module in model.named_modules()
               if type(module) is nn.Linear and name.rsplit(".", 1)[-1] not in SKIP]
    int8 = 0
    for name, module in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        if mode == "int4" and int4_group(*module.weight.shape):
            layer = Int4Linear(module.weight, module.bias)
        else:
            layer, int8 = Int8Linear(module.weight, module.bias), int8 + 1
        setattr(parent, child, layer)
    head_done = head and quantize_head(model)
    log.info("%s weight-only: %d linear layers%s%s", mode, len(targets),
             f" ({int8} kept in int8)" if mode == "int4" and int8 else "", ", int8 output head" if head_done else "")
    return len(targets) + head_done


def head_is_tied(model: nn.Module) -> bool:
    """Whether the output head shares its weight with the input embedding (SmolLM2): such a head keeps that float
    weight and decodes through an int8 copy (:class:`TiedInt8Head`)."""
    head, embed = model.get_output_embeddings(), model.get_input_embeddings()
    return (bool(getattr(getattr(model, "config", None), "tie_word_embeddings", False))
            or (embed is not None and head.weight is embed.weight))


def quantize_head(model: nn.Module) -> bool:
    """Replace the output head of a Hugging Face causal LM by an :class:`Int8Linear` (int8, a scale per vocabulary
    row), or by a :class:`TiedInt8Head` (the same for decoding, the float weight kept) where it is tied to the input
    embedding, in place, unless it is not a plain linear; return whether it was replaced.

    int8 and not int4 for both modes: the head sets the logits, and int8 holds them closer (the 1.5B's float32 head
    is 930 MB of the 1.7 GB an int4 decode step reads; int8 makes it 233 MB). Logits come out of the kernel in
    bfloat16 (torch's int8 kernel is 10x slower with float32 or float16 activations): about 3 significant digits,
    a step of 0.125 at a logit of 16-32."""
    get = getattr(model, "get_output_embeddings", None)
    head = get() if get is not None else None
    if type(head) is not nn.Linear:
        return False
    tied = head_is_tied(model)
    model.set_output_embeddings(TiedInt8Head(head.weight, head.bias) if tied else
                                Int8Linear(head.weight, head.bias, head=True))
    return True


def upcast_unquantized(model: nn.Module, dtype: torch.dtype) -> None:
    """Cast every floating parameter and buffer outside the weight-only layers to ``dtype``, in place (their int
    weights and bf16 scales, and a bias the layer adds in bf16 anyway, stay as they are)."""
    for module in model.modules():
        if isinstance(module, _WeightOnlyLinear):
            continue
        for name, param in module.named_parameters(recurse=False):
            if param.is_floating_point() and param.dtype != dtype:
                param.data = param.data.to(dtype)
        for name, buf in module.named_buffers(recurse=False):
            if buf.is_floating_point() and buf.dtype != dtype:
                setattr(module, name, buf.to(dtype))
