"""Control-token annotation of grounded training answers (issue 17, part 4): teach an expert to emit ``<|recall|>``
before what it copies from its passages and ``<|explain|>`` before its own words.

The rule (:func:`annotate`), on words (runs of letters/digits, compared lowercased):

- a **recall** span is a maximal run of at least ``min_words`` (4) consecutive words of the answer that occurs word
  for word, in order, in one of the prompt's passages; an answer shorter than ``min_words`` words is recall as a
  whole when it occurs in a passage (a copied short answer);
- everything else is **explain**; a stretch without a letter (a citation ``[1]``, punctuation) joins the segment
  before it instead of starting a segment of its own, so a control token is never spent on ``" [1]."``;
- a control token goes where the control changes (the first segment gets one too); an optional tone control
  (``formal``/``plain``) goes first, for data whose source gives the tone.

:func:`strip_controls` takes the tokens out again: the annotated text without them is the original answer, byte for
byte. :func:`grounded_examples` builds the training set of the shipped ``grounded`` expert from offline data only: SciQ
``support`` paragraphs (the ``validation:train`` half, the same half the science expert trains on) and SQuAD
paragraphs of the ``tune`` part (never a ``heldout`` paragraph, nor the paragraph of any of the first
``SQUAD_MEASURED`` tune questions, which the control benchmark measures on), with other paragraphs as distractors
(``distractors``; the shipped expert: none) or instead of the gold one, in the engine's prompt layout (system prompt, cite instruction, numbered passages).
:func:`retrieved_examples` adds distant supervision on the passages the default pipeline really retrieves (NQ-open and
TriviaQA ``tune`` questions after the first ``QA_MEASURED``, shipped in ``recipes/grounded_retrieved.jsonl.gz``): where
a passage holds a gold alias the reply copies its sentence, cited (recall), else the alias from the model's own
knowledge, marked (explain).
"""

from __future__ import annotations

import gzip
import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

from asymmetry.datasets import SQUAD_HELDOUT_FROM, hash_bucket, load_qa, load_squad, sciq_support
from asymmetry.errors import AsymmetryError
from asymmetry.experts.data import ChatExample, split_questions
from asymmetry.experts.prompts import build_messages

MIN_WORDS = 4
RECALL, EXPLAIN = "recall", "explain"
TONES = ("formal", "plain")
NOT_IN_SOURCES = "(not in the sources)"  # the engine's marker (asymmetry.engine.NOT_IN_SOURCES, a layer above)
SQUAD_MEASURED = 100  # the first N SQuAD tune questions (hash order): their paragraphs are never trained on
QA_MEASURED = 100  # likewise the first N NQ-open / TriviaQA tune questions: never in the retrieved training data
RETRIEVED_FILE = Path(__file__).parent / "recipes" / "grounded_retrieved.jsonl.gz"  # tools/make_grounded_passages.py
_WORD = re.compile(r"\w+")
_CITATION = re.compile(r"\[\s*\d+(?:\s*[,;]\s*\d+)*\s*\]")
_SENTENCE = re.compile(r"[^.!?]+[.!?]+(?=\s|$)|[^.!?]+$")


@dataclass(frozen=True)
class Segment:
    """``answer[start:end]`` is written under ``control``."""

    control: str
    start: int
    end: int


def _words(text: str) -> list[re.Match]:
    """The words of ``text``, leaving out citation markers (``[1]``, ``[1, 2]``): a citation is never copied."""
    cited = [m.span() for m in _CITATION.finditer(text)]
    return [m for m in _WORD.finditer(text) if not any(a <= m.start() < b for a, b in cited)]


def _norm_words(text: str) -> str:
    """The lowercased words of ``text`` joined by single spaces, padded with a space on both sides."""
    return " " + " ".join(m.group().lower() for m in _WORD.finditer(text)) + " "


def copied_spans(answer: str, passages: list[str], min_words: int = MIN_WORDS) -> list[tuple[int, int]]:
    """Character spans of ``answer`` copied from a passage (the recall rule of the module docstring), in order."""
    if min_words < 1:
        raise AsymmetryError(f"min_words={min_words}: use a positive number of words, e.g. {MIN_WORDS}")
    words = _words(answer)
    haystacks = [_norm_words(p) for p in passages]
    lower = [m.group().lower() for m in words]

    def found(i: int, j: int) -> bool:
        needle = " " + " ".join(lower[i:j]) + " "
        return any(needle in h for h in haystacks)

    if 0 < len(words) < min_words:
        return [(words[0].start(), words[-1].end())] if found(0, len(words)) else []
    spans, i = [], 0
    while i + min_words <= len(words):
        if not found(i, i + min_words):
            i += 1
            continue
        j = i + min_words
        while j < len(words) and found(i, j + 1):
            j += 1
        spans.append((words[i].start(), words[j - 1].end()))
        i = j
    return spans


def annotate(answer: str, passages: list[str], *, min_words: int = MIN_WORDS) -> list[Segment]:
    """The answer as consecutive segments (they cover it whole): recall where copied, explain elsewhere."""
    if not answer:
        return []
    cuts: list[Segment] = []
    pos = 0
    for start, end in copied_spans(answer, passages, min_words):
        if start > pos:
            cuts.append(Segment(EXPLAIN, pos, start))
        cuts.append(Segment(RECALL, start, end))
        pos = end
    if pos < len(answer):
        cuts.append(Segment(EXPLAIN, pos, len(answer)))
    merged: list[Segment] = []
    for seg in cuts:
        wordless = not any(c.isalpha() for c in answer[seg.start:seg.end])
        if merged and (seg.control == merged[-1].control or wordless):
            merged[-1] = Segment(merged[-1].control, merged[-1].start, seg.end)
        else:
            merged.append(seg)
    return merged


def render(answer: str, segments: list[Segment], tokens: dict[str, str], tone: str | None = None) -> str:
    """``answer`` with the control token of each segment before it (``tokens``: control name -> token text), after
    an optional tone control."""
    if tone is not None and tone not in TONES:
        raise AsymmetryError(f"unknown tone {tone!r}: use one of {', '.join(TONES)} or none")
    missing = [c for c in {s.control for s in segments} | ({tone} if tone else set()) if c not in tokens]
    if missing:
        raise AsymmetryError(f"control {missing[0]!r} is not in the vocabulary ([controls] disabled?): enable it")
    out = [tokens[tone]] if tone else []
    for seg in segments:
        out.append(tokens[seg.control] + answer[seg.start:seg.end])
    return "".join(out)


def annotated_answer(answer: str, passages: list[str], tokens: dict[str, str], *, min_words: int = MIN_WORDS,
                     tone: str | None = None) -> str:
    """:func:`annotate` then :func:`render`."""
    return render(answer, annotate(answer, passages, min_words=min_words), tokens, tone)


def strip_controls(text: str, tokens: list[str]) -> str:
    """``text`` without any of the control ``tokens``."""
    for token in sorted(tokens, key=len, reverse=True):
        text = text.replace(token, "")
    return text


# --- the grounded expert's training data -----------------------------------------------------------------------------


def _sentence_with(text: str, answer: str) -> str | None:
    """The first sentence of ``text`` holding ``answer`` as whole words (case-insensitive), stripped."""
    needle = _norm_words(answer)
    if needle.strip() == "":
        return None
    for m in _SENTENCE.finditer(text):
        if needle in _norm_words(m.group()):
            return m.group().strip()
    return None


def _window(text: str, answer: str | None, max_words: int) -> str:
    """At most ``max_words`` words of ``text`` in whole sentences, starting a sentence before the first one that
    holds ``answer`` (retrieved passages are about 100 words long)."""
    sentences = [m.group().strip() for m in _SENTENCE.finditer(text) if m.group().strip()]
    needle = _norm_words(answer) if answer else None
    hit = next((i for i, x in enumerate(sentences) if needle and needle in _norm_words(x)), 0)
    out: list[str] = []
    for x in sentences[max(0, hit - 1):]:
        if out and sum(len(y.split()) for y in out) + len(x.split()) > max_words:
            break
        out.append(x)
    return " ".join(out)


def _example(question: str, passages: list[tuple[str, str]], gold: int | None, answer: str, *, instruction: str,
             system: str | None, tokens: dict[str, str], source: str, min_words: int,
             max_words: int) -> ChatExample:
    """One chat example: numbered passages ``[n] title\\ntext`` in the system message, the annotated reply. With the
    gold passage at index ``gold``: the sentence of it that holds ``answer``, cited (else the answer, cited); without
    one (``gold`` None): the answer from the model's own knowledge, marked as the instruction asks."""
    passages = [(title, _window(text, answer if i == gold else None, max_words))
                for i, (title, text) in enumerate(passages)]
    packed = "\n\n".join(f"[{i}] {title}\n{text}" for i, (title, text) in enumerate(passages, 1))
    short = f"{answer[:1].upper()}{answer[1:]}"
    if gold is None:
        reply = f"{short}. {NOT_IN_SOURCES}"
    else:
        sentence = _sentence_with(passages[gold][1], answer)
        reply = f"{sentence} [{gold + 1}]" if sentence else f"{short} [{gold + 1}]."
    messages = build_messages(question, system=system, passages=packed, instruction=instruction)
    annotated = annotated_answer(reply, [t for _, t in passages], tokens, min_words=min_words)
    return ChatExample(messages + [{"role": "assistant", "content": annotated}], source=source)


def _passages(rng: random.Random, gold: tuple[str, str], pool: list[tuple[str, str]], without: float,
              distractors: int) -> tuple[list[tuple[str, str]], int | None]:
    """The gold passage and ``distractors`` others from ``pool``, in random order, or with probability ``without``
    only others (as many passages); and the gold passage's index (None without it)."""
    others = [p for p in pool if p[0] != gold[0] or p[1] != gold[1]]
    if rng.random() < without:
        return rng.sample(others, distractors + 1), None
    passages = [gold, *rng.sample(others, distractors)]
    rng.shuffle(passages)
    return passages, passages.index(gold)


def grounded_examples(tokens: dict[str, str], *, instruction: str, system: str | None = None, sciq: int = 200,
                      squad: int = 200, without: float = 0.25, distractors: int = 1, max_words: int = 120,
                      seed: int = 0, min_words: int = MIN_WORDS) -> list[ChatExample]:
    """Annotated grounded-answer examples (see the module docstring): up to ``sciq`` from SciQ and ``squad`` from
    SQuAD, shuffled with ``seed``; each prompt holds the gold passage and ``distractors`` others, or for a share
    ``without`` of them only others; passages are cut to ``max_words`` whole-sentence windows around the answer."""
    rng = random.Random(f"grounded-{seed}")
    kw = {"instruction": instruction, "system": system, "tokens": tokens, "min_words": min_words,
          "max_words": max_words}
    examples: list[ChatExample] = []
    support = sciq_support()
    sciq_rows = [q for q in split_questions("sciq", "validation:train", seed) if q.answer is not None and q.id in support]
    pool = sorted({("Science", support[q.id]) for q in sciq_rows})
    for q in rng.sample(sciq_rows, min(sciq, len(sciq_rows))):
        passages, gold = _passages(rng, ("Science", support[q.id]), pool, without, distractors)
        examples.append(_example(q.question, passages, gold, q.options[q.answer], source="sciq", **kw))
    items = load_squad()
    measured = {i.id for i in load_qa("squad", "tune")[:SQUAD_MEASURED]}
    barred = {i.paragraph for i in items if i.id in measured or hash_bucket(f"squad:{i.id}") >= SQUAD_HELDOUT_FROM}
    train = [i for i in items if i.paragraph not in barred and i.answers]
    pool = sorted({(i.title, i.paragraph) for i in train})
    for item in rng.sample(train, min(squad, len(train))):
        passages, gold = _passages(rng, (item.title, item.paragraph), pool, without, distractors)
        examples.append(_example(item.question, passages, gold, item.answers[0], source="squad", **kw))
    rng.shuffle(examples)
    return examples


def _alias_in(passages: list[tuple[str, str]], answers: list[str]) -> tuple[int, str] | None:
    """The first passage (index) holding a gold alias as whole words, and that alias; None when none does."""
    for i, (_, text) in enumerate(passages):
        words = _norm_words(text)
        for alias in answers:
            if _norm_words(alias).strip() and _norm_words(alias) in words:
                return i, alias
    return None


def retrieved_examples(tokens: dict[str, str], *, instruction: str, system: str | None = None, held: int = 150,
                       missing: int = 75, max_words: int = 120, seed: int = 0, min_words: int = MIN_WORDS,
                       path: str | Path = RETRIEVED_FILE) -> list[ChatExample]:
    """Distant supervision from the passages the default pipeline retrieves (``path``, written by
    ``tools/make_grounded_passages.py``: NQ-open and TriviaQA ``tune`` questions after the first ``QA_MEASURED``):
    up to ``held`` questions whose passages hold a gold alias (the reply: the passage sentence holding it, cited,
    annotated ``recall``) and up to ``missing`` whose passages do not (the first alias from the model's own knowledge,
    ``(not in the sources)``, ``explain``). Questions that retrieved no passage are left out (the engine prompts
    those without passages). The same prompt layout and windowing as :func:`grounded_examples`."""
    path = Path(path)
    try:
        rows = [json.loads(line) for line in gzip.decompress(path.read_bytes()).decode("utf-8").splitlines()]
    except FileNotFoundError:
        raise AsymmetryError(f"{path} is missing: reinstall asymmetry, or write it with "
                             "python tools/make_grounded_passages.py") from None
    except (OSError, EOFError, ValueError) as exc:
        raise AsymmetryError(f"{path} is damaged ({exc}): rewrite it with python tools/make_grounded_passages.py")
    rng = random.Random(f"retrieved-{seed}")
    kw = {"instruction": instruction, "system": system, "tokens": tokens, "min_words": min_words,
          "max_words": max_words}
    hits, misses = [], []
    for row in rows:
        passages = [(p["title"], p["text"]) for p in row["passages"]]
        if not passages or not row["answers"]:
            continue
        found = _alias_in(passages, row["answers"])
        if found is None:
            misses.append(_example(row["question"], passages, None, row["answers"][0], source=row["source"], **kw))
        else:
            example = _example(row["question"], passages, found[0], found[1], source=row["source"], **kw)
            if example.messages[-1]["content"].startswith(tokens[RECALL]):  # not a chance match cut off by windowing
                hits.append(example)
    examples = rng.sample(hits, min(held, len(hits))) + rng.sample(misses, min(missing, len(misses)))
    rng.shuffle(examples)
    return examples
