"""Log-probabilities of generated tokens (sampling/logprobs.py): the numbers are the model's own log-softmax (after
CFG, before the other stages), greedy picks the top alternative, the tokens rebuild the text, hidden tokens stay out,
and in a continuous batch each request gets its own entries while a request that does not ask computes none."""

from __future__ import annotations

import pickle

import pytest
import torch

from asymmetry.errors import ConfigError
from asymmetry.sampling import SamplerConfig
from asymmetry.sampling.batch import DecodeBatch, new_slot
from asymmetry.sampling.logprobs import TextDelta, legacy
from asymmetry.sampling.stages import CFG
from tests.sampling.test_controls import VOCAB, ForceAt, ctl, tid  # noqa: F401 -- ctl is a fixture

NEGATIVE = "Answer rudely."


@pytest.fixture(scope="module")
def prompt(gen):
    return gen.chat_prompt("Name a planet of the solar system.")


def model_logprobs(gen, prompt: list[int], tokens: list[int]) -> torch.Tensor:
    """(len(tokens), V): the model's log-softmax before each generated token, from one plain forward."""
    with torch.inference_mode():
        logits = gen.model(input_ids=torch.tensor([prompt + tokens])).logits[0].float()  # (T, V)
    return logits[len(prompt) - 1: len(prompt) - 1 + len(tokens)].log_softmax(-1)


def check_entries(out, n_top: int) -> None:
    entries = out.logprobs
    assert len(entries) == len(out.tokens) > 0
    assert "".join(e.token for e in entries) == out.text
    assert b"".join(e.utf8 for e in entries) == out.text.encode("utf-8")
    assert [e.offset for e in entries] == [sum(len(x.token) for x in entries[:i]) for i in range(len(entries))]
    for e in entries:
        values = [a.logprob for a in e.top]
        assert len(e.top) == n_top and values == sorted(values, reverse=True) and all(v <= 0 for v in values)
        assert e.logprob <= 0


def test_greedy_entries_are_the_models_log_softmax_and_the_chosen_token_is_the_top_one(gen, prompt):
    out = gen.generate(prompt, SamplerConfig(max_tokens=10, temperature=0, logprobs=5))
    check_entries(out, 5)
    reference = model_logprobs(gen, prompt, out.tokens)  # (T, V)
    for i, (e, token) in enumerate(zip(out.logprobs, out.tokens)):
        assert (e.top[0].token, e.top[0].logprob) == (e.token, e.logprob)
        assert e.logprob == pytest.approx(float(reference[i, token]), abs=1e-4)
        best = reference[i].topk(5)
        assert [a.logprob for a in e.top] == pytest.approx(best.values.tolist(), abs=1e-4)
        assert [a.utf8 for a in e.top] == [gen.tokenizer.decode([t]).encode() for t in best.indices.tolist()]


def test_sampling_stages_do_not_change_the_reported_distribution(gen, prompt):
    """Temperature and top-k shape what is drawn, not what is reported: the numbers stay the model's, and every
    drawn token is among its 3 most likely (top_k=3)."""
    config = SamplerConfig(max_tokens=10, temperature=1.5, top_k=3, seed=4, logprobs=3)
    out = gen.generate(prompt, config)
    check_entries(out, 3)
    reference = model_logprobs(gen, prompt, out.tokens)
    for i, (e, token) in enumerate(zip(out.logprobs, out.tokens)):
        assert e.logprob == pytest.approx(float(reference[i, token]), abs=1e-4)
        assert e.token in [a.token for a in e.top]
    assert any(e.token != e.top[0].token for e in out.logprobs), "at temperature 1.5 some draw is not the top one"


def test_cfg_entries_describe_the_guided_distribution(gen, prompt):
    out = gen.generate(prompt, SamplerConfig(max_tokens=8, temperature=0, cfg_scale=1.5, logprobs=2),
                       negative_prompt=NEGATIVE)
    check_entries(out, 2)
    cond = model_logprobs(gen, prompt, out.tokens)
    negative = gen.encode(NEGATIVE)
    uncond = model_logprobs(gen, negative, out.tokens)
    guided = CFG(1.5)
    for i, (e, token) in enumerate(zip(out.logprobs, out.tokens)):
        guided.set_branch_scores(uncond[i: i + 1])
        reference = guided(None, cond[i: i + 1])[0].log_softmax(-1)
        assert e.logprob == pytest.approx(float(reference[token]), abs=1e-3)
        assert e.token == e.top[0].token and int(reference.argmax()) == token


def test_no_logprobs_asked_none_computed_and_bad_counts_are_config_errors(gen, prompt):
    out = gen.generate(prompt, SamplerConfig(max_tokens=4, temperature=0))
    assert out.logprobs is None
    assert all(type(d) is str for d in gen.stream(prompt, SamplerConfig(max_tokens=4, temperature=0)))
    for bad in (21, -1, 2.5, True):
        with pytest.raises(ConfigError, match="sampler.logprobs"):
            SamplerConfig(logprobs=bad)


def test_streamed_entries_equal_the_whole_and_a_stop_string_keeps_the_cut_token(gen, prompt):
    stream = gen.stream(prompt, SamplerConfig(max_tokens=10, temperature=0, logprobs=1))
    deltas = list(stream)
    assert all(isinstance(d, TextDelta) for d in deltas)
    assert [e.token for d in deltas for e in d.logprobs] == [e.token for e in stream.result.logprobs]
    again = pickle.loads(pickle.dumps(deltas[0]))  # a delta crossing a process boundary (serve --ray) keeps them
    assert isinstance(again, TextDelta) and again == deltas[0] and again.logprobs == deltas[0].logprobs
    whole = stream.result.text
    long = next(e for e in stream.result.logprobs if len(e.token.strip()) >= 6)
    cut = long.offset + 3  # a stop string that starts inside a token: that token is the last entry
    stop = whole[cut:cut + 3]
    assert whole.find(stop) == cut
    stopped = gen.generate(prompt, SamplerConfig(max_tokens=10, temperature=0, logprobs=0, stop=[stop]))
    assert stopped.stats["finish_reason"] == "stop" and stopped.text == whole[:cut]
    assert stopped.logprobs[-1].token == long.token and stopped.logprobs[-1].top == []
    shape = legacy(stopped.logprobs)
    assert shape["tokens"][-1] == long.token and shape["text_offset"][-1] == long.offset
    assert shape["token_logprobs"][-1] == long.logprob and shape["top_logprobs"][-1] == {}


def test_hidden_tokens_get_no_entry_and_are_never_alternatives(ctl):  # noqa: F811
    from asymmetry.sampling import Generator

    model, tok, _ = ctl
    gen = Generator(model, tok, controls=VOCAB)
    prompt = tok("Once upon a time")["input_ids"]
    recall = tid(tok, "recall")
    stream = gen.stream(prompt, SamplerConfig(max_tokens=10, temperature=0, logprobs=20),
                        combiner=ForceAt(len(prompt), 4, recall))
    deltas = list(stream)
    out = stream.result
    assert recall in out.tokens and len(out.logprobs) == len(out.tokens) - 1
    assert "".join(e.token for e in out.logprobs) == out.text == "".join(deltas)
    hidden = set(gen.token_texts.hidden.tolist())
    assert recall in hidden and gen.tokenizer.eos_token_id in hidden
    texts = {e.token for e in out.logprobs} | {a.token for e in out.logprobs for a in e.top}
    assert not any("<|" in t for t in texts), texts


def test_a_batch_of_requests_with_and_without_logprobs_and_cfg_rows(gen, prompt):
    """Three requests in one DecodeBatch (one with CFG rows, one that asks for nothing, one joining late) get the
    entries and text they get alone; the one that does not ask gets plain text."""
    configs = [SamplerConfig(max_tokens=8, temperature=0, logprobs=3),
               SamplerConfig(max_tokens=8, temperature=0),
               SamplerConfig(max_tokens=6, temperature=0, cfg_scale=1.5, negative_prompt=NEGATIVE, logprobs=2)]
    prompts = [prompt, gen.chat_prompt("What is the capital of France?"), gen.chat_prompt("Describe the sea.")]
    solo = [gen.generate(p, c) for p, c in zip(prompts, configs)]
    slots = [new_slot(gen, p, c) for p, c in zip(prompts, configs)]
    deltas: dict[int, list] = {i: [] for i in range(3)}
    index = {id(s): i for i, s in enumerate(slots)}
    batch = DecodeBatch(gen)
    batch.join(slots[:2])
    for step in range(20):
        if step == 1:
            batch.join(slots[2:])
        batch.step(lambda s, d: deltas[index[id(s)]].append(d))
        if not batch.slots:
            break
    assert ["".join(deltas[i]) for i in range(3)] == [s.text for s in solo]
    assert all(type(d) is str for d in deltas[1])
    for i in (0, 2):
        got = [e for d in deltas[i] for e in d.logprobs]
        assert [e.token for e in got] == [e.token for e in solo[i].logprobs]
        assert [e.logprob for e in got] == pytest.approx([e.logprob for e in solo[i].logprobs], abs=2e-3)
        assert all(e.token == e.top[0].token for e in got)
    assert slots[2].max_batch_rows == 4
