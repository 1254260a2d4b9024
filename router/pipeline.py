"""Train and evaluate a router from the config: shipped sets via the mapping, user JSONL, cached embeddings."""

from __future__ import annotations

import hashlib
import logging
import os
from collections import Counter
from pathlib import Path

from asymmetry.embedder import Embedder
from asymmetry.errors import AsymmetryError
from asymmetry.router.config import RouterConfig
from asymmetry.router.data import PARTS, EmbeddingCache, Example, builtin_examples, load_mapping, merge, read_jsonl
from asymmetry.router.metrics import RouterReport, evaluate
from asymmetry.router.model import Router, RouterTrainSettings, train

log = logging.getLogger(__name__)

SPLIT_RULE = (
    "train: train splits, MMLU dev + 60% of validation, 60% of SciQ/NQ-open/TriviaQA validation; calibration / "
    "heldout: 50/50 of the other validation splits, 20%/20% of MMLU, SciQ, NQ-open, TriviaQA validation (SHA-1 of "
    "source:id); user JSONL 80/10/10 by SHA-1 of the question unless it names a split"
)


def load_examples(
    cfg: RouterConfig, data_files: list[str] | None = None, builtin: bool = True
) -> dict[str, list[Example]]:
    """``{part: [Example]}``: the shipped sets mapped by ``cfg.mapping`` (if ``builtin``) plus the JSONL files."""
    caps = {"train": cfg.max_train_per_source, "calibration": cfg.max_calibration_per_source,
            "heldout": cfg.max_heldout_per_source}
    sets = [builtin_examples(load_mapping(cfg.mapping), caps)] if builtin else []
    for f in [*cfg.data, *(data_files or [])]:
        sets.append(read_jsonl(f))
    if not sets:
        raise AsymmetryError("no router training data: keep the shipped sets or pass --data FILE.jsonl")
    return merge(*sets)


def _describe(examples: dict[str, list[Example]]) -> dict:
    return {part: dict(sorted(Counter(e.source for e in examples[part]).items())) for part in PARTS}


def _file_digest(path: str) -> str:
    return hashlib.sha1(Path(path).read_bytes()).hexdigest()


def train_router(
    cfg: RouterConfig,
    *,
    embedding_model: str | None = None,
    data_files: list[str] | None = None,
    builtin: bool = True,
    expert_names: list[str] | None = None,
    out: str | os.PathLike | None = None,
    save: bool = True,
    progress: bool = True,
    cache_root: str | os.PathLike | None = None,
    examples: dict[str, list[Example]] | None = None,
    embedder: Embedder | None = None,
) -> tuple[Router, RouterReport]:
    """Train, calibrate, evaluate on the held-out part and (if ``save``) write the router with its manifest.

    ``embedder`` embeds the questions not in the cache yet (default: one of ``embedding_model``)."""
    examples = examples or load_examples(cfg, data_files, builtin)
    labels = sorted({e.label for e in examples["train"]})
    if expert_names is not None:
        unknown = [name for name in [*labels, cfg.fallback] if name not in expert_names]
        if unknown:
            raise AsymmetryError(
                f"router labels {unknown} are not experts (available: {list(expert_names)}): define those experts "
                "or map their questions to existing experts in the mapping / JSONL"
            )
    for part in ("calibration", "heldout"):
        if not examples[part]:
            raise AsymmetryError(f"the {part} part is empty: add questions to it (JSONL \"split\": \"{part}\")")
    cache = EmbeddingCache(embedding_model, cache_root, embedder=embedder)
    x = {part: cache.vectors(examples[part], progress=progress) for part in PARTS}  # each (N_part, D)
    settings = RouterTrainSettings.from_config(cfg)
    router = train(
        x["train"], [e.label for e in examples["train"]], x["calibration"], [e.label for e in examples["calibration"]],
        labels=labels, fallback=cfg.fallback, threshold=cfg.threshold, embedding_model=cache.model_name,
        settings=settings, progress=progress,
    )
    router.embedder = embedder
    report = evaluate(router, x["heldout"], [e.label for e in examples["heldout"]])
    files = [*cfg.data, *(data_files or [])]
    router.manifest.update(
        data={
            "builtin": builtin,
            "mapping": load_mapping(cfg.mapping) if builtin else {},
            "files": {Path(f).name: _file_digest(f) for f in files},
            "split_rule": SPLIT_RULE,
            "caps": {"train": cfg.max_train_per_source, "calibration": cfg.max_calibration_per_source,
                     "heldout": cfg.max_heldout_per_source},
            "counts": _describe(examples),
        },
        heldout=report.to_dict(),
    )
    if save:
        router.save(out if out is not None else cfg.path)
    return router, report


def evaluate_router(
    router: Router,
    cfg: RouterConfig,
    *,
    data_files: list[str] | None = None,
    builtin: bool = True,
    progress: bool = True,
    cache_root: str | os.PathLike | None = None,
    embedder: Embedder | None = None,
) -> RouterReport:
    """Evaluate ``router`` on the held-out part of the configured data (same split rule as training); ``embedder``
    (default: the router's) embeds the questions not in the cache yet."""
    examples = load_examples(cfg, data_files, builtin)
    heldout = examples["heldout"]
    if not heldout:
        raise AsymmetryError("no held-out questions to evaluate on: add JSONL lines with \"split\": \"heldout\"")
    cache = EmbeddingCache(router.embedding_model, cache_root, embedder=embedder or router.embedder)
    x = cache.vectors(heldout, progress=progress)  # (N, D)
    return evaluate(router, x, [e.label for e in heldout])
