"""Control-token annotation of grounded answers (issue 17, part 4; experts/annotate.py) on real SQuAD and SciQ data:
what an answer copies from its passage becomes recall, the rest explain, and the tokens come out again exactly."""

from __future__ import annotations

import gzip
import itertools
import json
import re

import pytest

from asymmetry.datasets import SQUAD_HELDOUT_FROM, hash_bucket, load_qa, load_squad, sciq_support
from asymmetry.engine import CITE_INSTRUCTION
from asymmetry.errors import AsymmetryError
from asymmetry.experts.annotate import (
    EXPLAIN,
    QA_MEASURED,
    RECALL,
    RETRIEVED_FILE,
    SQUAD_MEASURED,
    annotate,
    annotated_answer,
    grounded_examples,
    retrieved_examples,
    strip_controls,
)
from asymmetry.sampling.controls import ControlsConfig

TOKENS = {c.name: c.token for c in ControlsConfig().controls}


@pytest.fixture(scope="module")
def squad_item():
    return next(i for i in load_squad() if i.title == "Harvard University" and "Regatta" in i.question)


def test_a_sentence_copied_from_the_passage_is_recall_and_the_model_s_own_words_explain(squad_item):
    paragraph = squad_item.paragraph
    copied = "the Harvard-Yale Regatta was the original source of the athletic rivalry between the two schools"
    assert copied in paragraph
    answer = f"The regatta is the older event; {copied} [1]."
    segments = annotate(answer, [paragraph])
    assert [s.control for s in segments] == [EXPLAIN, RECALL]
    assert answer[segments[1].start:segments[1].end].startswith(copied)  # the citation joins the recall segment
    assert segments[0].start == 0 and segments[-1].end == len(answer)
    assert all(a.end == b.start for a, b in itertools.pairwise(segments))  # the segments cover the answer

    text = annotated_answer(answer, [paragraph], TOKENS)
    assert text.startswith(TOKENS["explain"]) and TOKENS["recall"] + "the Harvard-Yale" in text
    assert strip_controls(text, list(TOKENS.values())) == answer

    other = load_squad()[-1].paragraph  # a passage of another article: nothing is copied from it
    assert [s.control for s in annotate(answer, [other])] == [EXPLAIN]
    assert annotate("23 years", [paragraph])[0].control == RECALL  # a short answer found in the passage
    assert annotate("three runs of words here", [paragraph], min_words=4)[0].control == EXPLAIN
    with pytest.raises(AsymmetryError, match="tone"):
        annotated_answer(answer, [paragraph], TOKENS, tone="pirate")
    assert annotated_answer(answer, [paragraph], TOKENS, tone="formal").startswith(TOKENS["formal"] + TOKENS["explain"])


def test_the_grounded_training_set_never_holds_an_evaluation_paragraph_and_strips_back_to_plain_answers():
    examples = grounded_examples(TOKENS, instruction=CITE_INSTRUCTION, sciq=40, squad=40)
    assert len(examples) == 80
    items = load_squad()
    measured = {i.id for i in load_qa("squad", "tune")[:SQUAD_MEASURED]}
    barred = [i.paragraph for i in items if i.id in measured or hash_bucket(f"squad:{i.id}") >= SQUAD_HELDOUT_FROM]
    supports = set(sciq_support().values())
    kinds = set()
    for ex in examples:
        system, reply = ex.messages[0]["content"], ex.messages[-1]["content"]
        assert CITE_INSTRUCTION in system and "Passages:\n[1] " in system
        assert not any(p[:80] in system for p in barred), "a held-out or measured SQuAD paragraph was trained on"
        plain = strip_controls(reply, list(TOKENS.values()))
        assert "<|" not in plain and plain.strip()
        first = next((t for t in (TOKENS["recall"], TOKENS["explain"]) if reply.startswith(t)), None)
        assert first is not None, reply
        kinds.add((ex.source, first))
        if first == TOKENS["recall"] and ex.source == "sciq":
            assert any(plain.split(" [")[0] in s for s in supports)  # the copied sentence is the support's own
    assert {("sciq", TOKENS["recall"]), ("squad", TOKENS["recall"]), ("squad", TOKENS["explain"])} <= kinds


def test_retrieved_training_data_holds_only_unmeasured_tune_questions_and_cites_the_passage_with_the_answer():
    rows = [json.loads(line) for line in gzip.decompress(RETRIEVED_FILE.read_bytes()).decode().splitlines()]
    for source in ("triviaqa", "nq_open"):
        parts = {part: {i.id for i in load_qa(source, part)} for part in ("heldout", "tune")}
        measured = {i.id for i in load_qa(source, "tune")[:QA_MEASURED]}
        ids = {r["id"] for r in rows if r["source"] == source}
        assert len(ids) >= 300 and ids <= parts["tune"] and not ids & parts["heldout"] and not ids & measured
    examples = retrieved_examples(TOKENS, instruction=CITE_INSTRUCTION, held=1000, missing=40)
    recall = [e for e in examples if e.messages[-1]["content"].startswith(TOKENS["recall"])]
    explain = [e for e in examples if e.messages[-1]["content"].startswith(TOKENS["explain"])]
    assert len(explain) == 40 and len(recall) >= 80 and len(recall) + len(explain) == len(examples)
    for ex in recall:  # the reply copies a sentence (or the answer's words) of the cited passage
        system, reply = ex.messages[0]["content"], strip_controls(ex.messages[-1]["content"], list(TOKENS.values()))
        n = int(reply.rsplit("[", 1)[1].split("]")[0])
        block = system.split(f"[{n}] ", 1)[1].split("\n\n[", 1)[0]
        words = " ".join(re.findall(r"\w+", reply.rsplit(" [", 1)[0].lower()))
        assert words in " ".join(re.findall(r"\w+", block.lower())), (reply, block)
    assert all(e.messages[-1]["content"].endswith("(not in the sources)") for e in explain)
    with pytest.raises(AsymmetryError, match="make_grounded_passages"):
        retrieved_examples(TOKENS, instruction=CITE_INSTRUCTION, path=RETRIEVED_FILE.with_name("missing.jsonl.gz"))
