"""Continuous batching (sampling/batch.py): requests that join a running batch at different steps, with CFG rows,
give exactly their own greedy output; a cancelled request leaves and the cache keeps only the columns still used."""

from __future__ import annotations

import pytest

from asymmetry.errors import AsymmetryError
from asymmetry.sampling import Generator, SamplerConfig
from asymmetry.sampling.batch import BatchRunner, DecodeBatch, QueueFull, new_slot


@pytest.fixture(scope="module")
def prompts(gen):
    questions = ["Name a planet.", "What is the capital of France? Explain.", "Write a haiku about the sea."]
    return [gen.chat_prompt(q) for q in questions]


CONFIGS = [SamplerConfig(max_tokens=10, temperature=0), SamplerConfig(max_tokens=12, temperature=0),
           SamplerConfig(max_tokens=6, temperature=0, cfg_scale=1.5, negative_prompt="Answer rudely.")]


def test_requests_joining_at_different_steps_keep_their_own_greedy_output(gen, prompts):
    solo = [gen.generate(p, c).text for p, c in zip(prompts, CONFIGS)]
    batch = DecodeBatch(gen)
    texts = {i: "" for i in range(3)}
    slots = [new_slot(gen, p, c) for p, c in zip(prompts, CONFIGS)]
    index = {id(s): i for i, s in enumerate(slots)}

    def emit(slot, delta):
        texts[index[id(slot)]] += delta

    batch.join(slots[:1])
    for step in range(40):
        if step == 2:
            batch.join(slots[1:2])  # joins a batch 2 tokens in: caches of different widths are merged
        if step == 4:
            batch.join(slots[2:])  # a CFG request: two rows
            assert batch.n_rows == 4 and batch.mask.shape[0] == batch.cache.layers[0].keys.shape[0] == 4
        batch.step(emit)
        assert batch.mask.shape[1] == batch.cache.layers[0].keys.shape[2] if batch.slots else batch.cache is None
        if step > 4 and not batch.slots:
            break
    assert [texts[i] for i in range(3)] == solo
    assert slots[1].shared_steps > 0 and slots[2].max_batch_rows == 4


def test_a_cancelled_request_leaves_and_unused_cache_columns_are_trimmed(gen, prompts):
    long_prompt, short_prompt = prompts[1], prompts[0]
    batch = DecodeBatch(gen)
    first, second = new_slot(gen, long_prompt, CONFIGS[1]), new_slot(gen, short_prompt, CONFIGS[0])
    batch.join([first, second])
    batch.step(lambda s, d: None)
    width = batch.mask.shape[1]
    batch.leave([first])  # the longer prompt leaves: the columns only it used go
    assert batch.slots == [second] and batch.n_rows == 1
    assert batch.mask.shape[1] == batch.cache.layers[0].keys.shape[2] < width
    assert bool(batch.mask[:, 0].all()), "the first column is used by the remaining row"


def test_runner_streams_cancels_and_bounds_its_queue(smollm, prompts):
    gen = Generator(smollm.model, smollm.tokenizer, lock=smollm.lock)
    runner = BatchRunner(gen, max_rows=1, max_waiting=1)
    try:
        running = runner.submit(prompts[1], SamplerConfig(max_tokens=200, temperature=0))
        deltas = iter(running)
        next(deltas)  # it runs
        waiting = runner.submit(prompts[0], CONFIGS[0])  # does not fit in 1 row: waits
        with pytest.raises(QueueFull):
            runner.submit(prompts[0], CONFIGS[0])
        running.close()  # frees its row at the next step; its iteration ends
        assert list(deltas) == [] and running.result is None
        assert "".join(waiting) == gen.generate(prompts[0], CONFIGS[0]).text
        assert waiting.result.stats["queue_s"] > 0 and runner.stats()["running"] == 0
        with pytest.raises(AsymmetryError, match="grammar"):
            runner.submit(prompts[0], SamplerConfig(max_tokens=4, grammar="root ::= ("))
    finally:
        runner.close()
    assert not runner._thread.is_alive()


def test_rows_without_a_per_row_kwarg_get_the_default(gen):
    batch = DecodeBatch(gen, row_defaults={"adapter_names": "__base__"})
    kwargs = batch._forward_kwargs([{"adapter_names": "science"}, {}, {"adapter_names": "commonsense"}])
    assert kwargs == {"adapter_names": ["science", "__base__", "commonsense"]}
    assert batch._forward_kwargs([{}, {}]) == {}


def test_a_row_prefilled_anew_with_its_own_sequence_changes_nothing(gen, prompts):
    """The generator may ask to prefill a row anew (a control token that switches the CFG negative): the batch
    restarts that row within the step's forward. Restarting the CFG negative with the very sequence it holds must
    leave the answer as it is."""
    if not hasattr(gen, "_prefill_step"):
        pytest.skip("this generator has no control-token prefill")
    config = CONFIGS[2]
    solo = gen.generate(prompts[2], config).text
    batch = DecodeBatch(gen)
    other, cfg = new_slot(gen, prompts[0], CONFIGS[0]), new_slot(gen, prompts[2], config)
    negative_row = cfg.req.negative_row
    text, restarted = [], []

    def emit(slot, delta):
        if slot is cfg:
            text.append(delta)
            if len(text) == 2:  # after this token is sampled: the negative row's prompt and every token fed to it
                slot.req.prefill = {negative_row: cfg.rows[negative_row] + slot.req.tokens}
                restarted.append(len(slot.req.prefill[negative_row]))

    batch.join([other, cfg])
    for _ in range(20):
        width = batch.mask.shape[1]
        batch.step(emit)
        if len(restarted) == 1:
            assert batch.mask.shape[1] == width + restarted[0], "the restart ran in this step's forward"
            restarted.append(None)
        if cfg not in batch.slots:
            break
    assert restarted and "".join(text) == solo
