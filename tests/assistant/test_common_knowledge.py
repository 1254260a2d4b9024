"""The main job with the defaults a user gets: 30 common-knowledge questions of our own writing (subjects among the
Vital Articles of the default corpus, answers as alias lists in tests/data/common_knowledge.jsonl), asked through
``Assistant.load().ask(q)`` with nothing changed. At least 29 must contain a gold alias, and every right answer whose
answer is in a cited source must cite it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from asymmetry.assistant import Assistant
from asymmetry.eval.answers import score_answer

pytestmark = pytest.mark.slow  # 30 answers of the 1.5B base: about 10 minutes on 2 cores (python -m pytest -m slow)

QUESTIONS = [json.loads(line) for line in (Path(__file__).parent.parent / "data" / "common_knowledge.jsonl")
             .read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.fixture(scope="module")
def answers(pool):
    bot = Assistant.load(pool=pool)
    return [(q, bot.ask(q["question"])) for q in QUESTIONS]


def test_questions_are_well_formed():
    assert len(QUESTIONS) == 30 and len({q["id"] for q in QUESTIONS}) == 30
    assert all(q["question"].endswith("?") and q["answers"] for q in QUESTIONS)


def test_at_least_29_of_30_answered_right(answers):
    wrong = [(q["question"], a.text) for q, a in answers
             if not score_answer(a.text, q["answers"], [s.title + "\n" + s.text for s in a.sources])["contains"]]
    assert len(wrong) <= 1, wrong


def test_right_answers_cite_the_source_that_holds_the_answer(answers):
    grounded = []
    for q, a in answers:
        s = score_answer(a.text, q["answers"], [src.title + "\n" + src.text for src in a.sources])
        if s["grounded"] is not None:
            grounded.append((s["grounded"], q["question"], a.text))
    assert grounded, "no right answer had its answer in the sources"
    assert sum(g for g, _, _ in grounded) >= 0.9 * len(grounded), [g for g in grounded if not g[0]]
