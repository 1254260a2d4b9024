"""The shared sentence embedder (ground floor): one object per model, passed to whoever embeds.

The engine embeds a question once and hands that vector to the router and the retriever; index builds and router
training embed passages and questions with the same class. There is no module-level cache: whoever owns an
:class:`Embedder` (the engine, a build, a test fixture) decides how long it lives.

Backends (``[index] embed_backend``, measured in ``benchmarks/embed_backends.py``): ``torch`` runs the
sentence-transformers model; ``onnx`` and ``onnx-int8`` run its transformer with ONNX Runtime (fp32, or int8 weights
quantized dynamically with optimum's AVX512-VNNI settings), pooled and normalised as the model's modules say. The ONNX
files are exported from the model folder on first use into ``$ASYMMETRY_HOME/onnx/<model>-<weights sha256>/``
(atomically; the ``onnx`` package is needed for that: ``pip install 'asymmetry[onnx]'``). int8 vectors differ from
torch's (cosine ~0.995), so an index records its backend and its queries are embedded with the same one.

Shapes: N texts, D embedding dimensions, B a batch, S tokens.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import threading
import warnings
from pathlib import Path

import numpy as np

from asymmetry import defaults
from asymmetry.atomic import atomic_path
from asymmetry.errors import AsymmetryError

EMBED_BACKENDS = ("torch", "onnx", "onnx-int8")
ONNX_EXPORT_VERSION = 1  # part of the export folder's name: a change of the export makes new files


def embedding_model_path(model: str | None = None) -> Path:
    """``None`` or ``"default"``: the embedded all-MiniLM-L6-v2; otherwise a local sentence-transformers folder."""
    if model in (None, "default", defaults.DEFAULT_EMBEDDING_NAME):
        return defaults.embedding_model_path()
    path = Path(model).expanduser()
    if not path.is_dir():
        raise AsymmetryError(f"embedding model folder {path} does not exist: pass a local sentence-transformers folder")
    return path


def embedding_model_name(model: str | None = None) -> str:
    """A stable name recorded in manifests (index, router) to detect a mismatched embedding model."""
    path = embedding_model_path(model)
    if path == defaults.embedding_model_path():
        return defaults.DEFAULT_EMBEDDING_NAME
    return str(path.resolve())


def check_backend(backend: str, field: str = "embed_backend") -> str:
    if backend not in EMBED_BACKENDS:
        raise AsymmetryError(f"{field} = {backend!r} is not a backend: use one of {', '.join(EMBED_BACKENDS)}")
    return backend


def weights_sha256(model_dir: Path) -> str:
    """SHA-256 over the embedding model's weight files (name, then bytes), in name order (once per process and
    file state)."""
    files = sorted(model_dir.glob("*.safetensors")) + sorted(model_dir.glob("*.bin"))
    return _weights_sha256(tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files))


@functools.lru_cache(maxsize=8)
def _weights_sha256(files: tuple[tuple[str, int, int], ...]) -> str:
    digest = hashlib.sha256()
    for name, _, _ in files:
        f = Path(name)
        digest.update(f.name.encode())
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


class Embedder:
    """A sentence-transformers model, loaded on first use; ``encode`` returns normalised float32 vectors.
    ``backend`` (one of :data:`EMBED_BACKENDS`) is what runs the transformer; ``name`` is the model's either way."""

    def __init__(self, model: str | None = None, device: str = "cpu", backend: str = "torch"):
        self.path = embedding_model_path(model)
        self.name = embedding_model_name(model)
        self.device = device
        self.backend = check_backend(backend)
        self._model = None
        self._session = None  # the ONNX Runtime session of an onnx backend
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        backend = "" if self.backend == "torch" else f", backend={self.backend!r}"
        return f"Embedder({self.name!r}{backend}, loaded={self._model is not None})"

    @property
    def model(self):
        """The ``SentenceTransformer`` (loaded once, offline)."""
        with self._lock:
            if self._model is None:
                defaults.ensure_offline()
                from sentence_transformers import SentenceTransformer  # heavy: only when something is embedded

                with defaults.quiet_loading():
                    self._model = SentenceTransformer(str(self.path), device=self.device, local_files_only=True)
            return self._model

    @property
    def dimension(self) -> int:
        return int(self.model.get_embedding_dimension())

    def encode(self, texts: list[str], batch_size: int = 64, show_progress: bool = False) -> np.ndarray:
        """Normalised float32 embeddings, shape (N, D) (cosine similarity = inner product)."""
        model = self.model
        if self.backend != "torch":
            return self._encode_onnx(list(texts), batch_size)
        with self._lock:  # a fast tokenizer with padding/truncation must not be entered by two threads at once
            vectors = model.encode(list(texts), batch_size=batch_size, normalize_embeddings=True,
                                   convert_to_numpy=True, show_progress_bar=show_progress)
        return np.asarray(vectors, dtype=np.float32)  # (N, D)

    # ------------------------------------------------------------------------------------------------ onnx backends
    def onnx_path(self) -> Path:
        """This backend's ONNX file, exported from the model folder on first use (never into the folder itself)."""
        model = self.model
        key = f"{Path(self.name).name}-{weights_sha256(self.path)[:16]}-v{ONNX_EXPORT_VERSION}"
        folder = defaults.home() / "onnx" / key
        fp32, int8 = folder / "fp32.onnx", folder / "int8-avx512_vnni.onnx"
        if not fp32.is_file():
            _export_onnx(model, fp32)
        if self.backend == "onnx-int8" and not int8.is_file():
            _quantize_int8(fp32, int8)
        return int8 if self.backend == "onnx-int8" else fp32

    @property
    def session(self):
        """The ONNX Runtime session of an onnx backend (exported and loaded once)."""
        if self._session is None:
            path = self.onnx_path()
            with self._lock:
                if self._session is None:
                    import onnxruntime as ort  # heavy: only for an onnx backend
                    import torch  # heavy: already loaded with the model; the session gets torch's thread count

                    options = ort.SessionOptions()
                    options.intra_op_num_threads = torch.get_num_threads()
                    self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return self._session

    def _encode_onnx(self, texts: list[str], batch_size: int) -> np.ndarray:
        """Batches of similar length (as sentence-transformers does), mean-pooled over the mask, normalised."""
        model, session = self.model, self.session
        names = [i.name for i in session.get_inputs()]
        order = np.argsort([-len(t) for t in texts], kind="stable")
        out = np.empty((len(texts), self.dimension), dtype=np.float32)  # (N, D)
        for start in range(0, len(texts), batch_size):
            idx = order[start: start + batch_size]
            with self._lock:  # the fast tokenizer is not re-entrant
                batch = model.tokenizer([texts[i] for i in idx], padding=True, truncation=True,
                                        max_length=int(model.max_seq_length), return_tensors="np")
            hidden = session.run(None, {n: batch[n].astype(np.int64) for n in names})[0]  # (B, S, D)
            mask = batch["attention_mask"][..., None].astype(np.float32)  # (B, S, 1)
            pooled = (hidden * mask).sum(axis=1) / np.clip(mask.sum(axis=1), 1e-9, None)  # (B, D)
            out[idx] = pooled / np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
        return out


def _onnx_modules_supported(model) -> bool:
    """The ONNX path reproduces Transformer -> mean Pooling [-> Normalize] (what all-MiniLM-L6-v2 is)."""
    kinds = [type(m).__name__ for m in model]
    mode = getattr(model[1], "pooling_mode", None) if len(kinds) > 1 else None
    return kinds[:2] == ["Transformer", "Pooling"] and kinds[2:] in ([], ["Normalize"]) and mode in ("mean", ["mean"])


def _onnx_tools():
    try:
        import onnx  # noqa: F401  (torch's exporter and onnxruntime's quantizer need it)
    except ImportError:
        raise AsymmetryError(
            "embed_backend onnx/onnx-int8 exports the embedding model with the onnx package, which is not installed: "
            "pip install 'asymmetry[onnx]' (or pip install onnx), or set index.embed_backend = \"torch\""
        ) from None


def _export_onnx(model, out: Path) -> None:
    """The model's transformer (token ids -> last hidden states, dynamic batch and length) as ONNX, atomically."""
    if not _onnx_modules_supported(model):
        raise AsymmetryError(
            f"embed_backend onnx supports models of a transformer, mean pooling and normalisation; this one is "
            f"{' -> '.join(type(m).__name__ for m in model)}: set index.embed_backend = \"torch\""
        )
    _onnx_tools()
    import torch  # heavy: only when exporting

    names = list(model.tokenizer.model_input_names)
    hf = model[0].auto_model.eval()

    class Encoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.hf = hf

        def forward(self, *inputs):
            return self.hf(**dict(zip(names, inputs))).last_hidden_state  # (B, S, D)

    batch = model.tokenizer(["an example", "a longer example sentence"], padding=True, return_tensors="pt")
    axes = {n: {0: "batch", 1: "tokens"} for n in [*names, "last_hidden_state"]}
    with atomic_path(out, suffix=".onnx") as tmp, warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer warnings
        torch.onnx.export(Encoder(), tuple(batch[n].to(hf.device) for n in names), str(tmp), dynamo=False, input_names=names,
                          output_names=["last_hidden_state"], dynamic_axes=axes, opset_version=17)


def _quantize_int8(fp32: Path, out: Path) -> None:
    """Dynamic int8 quantization with optimum's ``AutoQuantizationConfig.avx512_vnni(is_static=False)`` settings:
    symmetric per-channel int8 weights, uint8 activations, full range, the IntegerOps operators."""
    _onnx_tools()
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.registry import IntegerOpsRegistry

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # its "consider pre-processing" advice is for static quantization
    try:
        with atomic_path(out, suffix=".onnx") as tmp:
            quantize_dynamic(fp32, tmp, op_types_to_quantize=list(IntegerOpsRegistry), per_channel=True,
                             reduce_range=False, weight_type=QuantType.QInt8,
                             extra_options={"WeightSymmetric": True, "ActivationSymmetric": False})
    finally:
        root.setLevel(level)
