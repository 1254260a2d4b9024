"""A chat keeps the KV cache of its last turn and the next turn prefills only what is new (asymmetry/assistant.py:
Chat, sampling/prefix.py), on the small line-up (LoRA experts on SmolLM2): greedy answers equal a chat without
reuse, turn after turn, across an expert change (another adapter) and with retrieval changing the passages."""

from __future__ import annotations

import pytest

from asymmetry import Assistant
from asymmetry.config import Config

GREEDY = {"max_tokens": 20, "temperature": 0.0}
TURNS = [("What is photosynthesis?", {}), ("Which organisms do it?", {}),
         ("How would a farmer feel after a good harvest?", {"expert": "commonsense"}),
         ("Where in the cell does photosynthesis happen?", {"retrieval": True})]


@pytest.fixture(scope="module")
def bot(pool):
    return Assistant(Config.from_dict({"experts": {"lineup": "small"}}), pool=pool)


def _turns(chat):
    return [chat.say(q, **kw) for q, kw in TURNS]


def test_chat_reuses_its_last_turn_and_answers_as_without_reuse(bot):
    plain = _turns(bot.chat(kv_reuse=False, expert="science", retrieval=False, sampler=GREEDY))
    chat = bot.chat(expert="science", retrieval=False, sampler=GREEDY)
    reused = _turns(chat)
    assert [a.text for a in reused] == [a.text for a in plain]
    assert [a.expert for a in reused] == ["science", "science", "commonsense", "science"]
    stats = [a.stats for a in reused]
    assert all(a.stats["reused_tokens"] == 0 for a in plain)
    assert stats[0]["reused_tokens"] == 0
    assert stats[1]["reused_tokens"] >= stats[0]["prompt_tokens"]  # the whole first turn
    assert stats[1]["prefill_tokens"] + stats[1]["reused_tokens"] == stats[1]["prompt_tokens"]
    assert stats[2]["reused_tokens"] == 0  # another adapter: science's cache is not commonsense's
    # back to science with passages in the system message: only the template's opening and the system prompt match
    assert stats[3]["reused_tokens"] < stats[3]["prompt_tokens"] // 4
    chat.reset()
    assert len(chat.prompt_cache) == 0


def test_an_edited_history_does_not_reuse_the_old_turn(bot):
    chat = bot.chat(expert="science", retrieval=False, sampler=GREEDY)
    chat.say(TURNS[0][0])
    chat.history[1] = {"role": "assistant", "content": "It is how plants make sugar from light."}
    answer = chat.say(TURNS[1][0])
    plain = bot.chat(kv_reuse=False, expert="science", retrieval=False, sampler=GREEDY)
    plain.history = list(chat.history[:2])
    assert answer.text == plain.say(TURNS[1][0]).text
    first_prompt = len(bot.prepare(TURNS[0][0], expert="science", retrieval=False, sampler=GREEDY).prompt_ids)
    assert answer.stats["reused_tokens"] <= first_prompt + 2  # the first turn's prompt, not its old reply
