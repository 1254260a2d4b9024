"""Reusing a conversation's KV cache across turns (sampling/prefix.py) on the real SmolLM2: greedy replies with
reuse equal those without, only the new suffix is prefilled, and a prompt that differs early reuses only what is
really shared."""

from __future__ import annotations

import itertools

import pytest

from asymmetry.sampling import SamplerConfig
from asymmetry.sampling.prefix import PromptCache

GREEDY = SamplerConfig(temperature=0.0, max_tokens=20)
QUESTIONS = ["What is photosynthesis?", "Which organisms do it?", "Where in the cell does it happen?",
             "Name one product of it."]


def _prompt(tokenizer, history, question, system="You are a helpful science teacher."):
    messages = [{"role": "system", "content": system}, *history, {"role": "user", "content": question}]
    out = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    return list(out if isinstance(out, list) else out["input_ids"])


def _chat(gen, questions, cache=None, edit=None):
    """Greedy turns; ``edit(history)`` changes the history before the last turn. Returns (texts, stats)."""
    history, texts, stats = [], [], []
    for i, q in enumerate(questions):
        if edit is not None and i == len(questions) - 1:
            edit(history)
        out = gen.generate(_prompt(gen.tokenizer, history, q), GREEDY, prompt_cache=cache)
        texts.append(out.text)
        stats.append(out.stats)
        history += [{"role": "user", "content": q}, {"role": "assistant", "content": out.text}]
    return texts, stats


def test_greedy_turns_with_reuse_equal_turns_without_and_prefill_only_the_suffix(gen):
    plain, plain_stats = _chat(gen, QUESTIONS)
    cache = PromptCache()
    reused, stats = _chat(gen, QUESTIONS, cache)
    assert reused == plain
    assert stats[0]["reused_tokens"] == 0 and all(s["reused_tokens"] == 0 for s in plain_stats)
    for before, s in itertools.pairwise(stats):
        # the whole previous turn (its prompt and reply) is the new prompt's prefix: only the new turn is prefilled
        assert s["reused_tokens"] >= before["prompt_tokens"], (before, s)
        assert s["prefill_tokens"] + s["reused_tokens"] == s["prompt_tokens"]
        assert s["prefill_tokens"] < 30
    assert 0 < len(cache) <= stats[-1]["prompt_tokens"] + GREEDY.max_tokens  # one sequence, bounded


def test_an_edited_history_reuses_only_the_shared_prefix(gen):
    def edit(history):
        history[0] = {"role": "user", "content": "What is respiration?"}

    cache = PromptCache()
    texts, stats = _chat(gen, QUESTIONS[:3], cache, edit=edit)
    plain, _ = _chat(gen, QUESTIONS[:3], edit=edit)
    assert texts == plain
    head = len(_prompt(gen.tokenizer, [], "x")) - 6  # the system message and the opening of the first user turn
    assert 0 < stats[-1]["reused_tokens"] < head + 3


def test_a_new_system_prompt_or_a_cfg_row_does_not_take_a_wrong_cache(gen):
    cache = PromptCache()
    first = gen.generate(_prompt(gen.tokenizer, [], QUESTIONS[0]), GREEDY, prompt_cache=cache)
    held = list(cache.ids)
    other = _prompt(gen.tokenizer, [], QUESTIONS[0], system="You are a pirate.")
    out = gen.generate(other, GREEDY, prompt_cache=cache)
    assert out.text == gen.generate(other, GREEDY).text
    assert out.stats["reused_tokens"] < 8  # the template's opening only
    # CFG runs two rows: no reuse, and the held cache (of the pirate turn) stays as it was
    held = list(cache.ids)
    cfg = SamplerConfig(temperature=0.0, max_tokens=8, cfg_scale=1.5, negative_prompt="Be vague.")
    out = gen.generate(other, cfg, prompt_cache=cache)
    assert out.stats["reused_tokens"] == 0 and cache.ids == held
    assert first.stats["prefill_tokens"] == first.stats["prompt_tokens"]


def test_a_stream_closed_early_leaves_a_cache_that_matches_its_ids(gen):
    cache = PromptCache()
    prompt = _prompt(gen.tokenizer, [], QUESTIONS[0])
    stream = gen.stream(prompt, GREEDY, prompt_cache=cache)
    deltas = iter(stream)
    next(deltas), next(deltas)
    deltas.close()
    assert len(cache) == cache.cache.get_seq_length() and cache.ids[: len(prompt)] == prompt
    again = gen.generate(prompt, GREEDY, prompt_cache=cache)  # the same prompt: all but its last token reused
    assert again.stats["reused_tokens"] == len(prompt) - 1
    assert again.text == gen.generate(prompt, GREEDY).text


@pytest.mark.parametrize("key", ["other model", None])
def test_take_checks_the_key_and_empties_the_entry(gen, key):
    cache = PromptCache()
    prompt = _prompt(gen.tokenizer, [], QUESTIONS[0])
    gen.generate(prompt, GREEDY, prompt_cache=cache)
    past, n = cache.take(key, prompt)
    assert (past, n) == (None, 0) and len(cache) == 0
