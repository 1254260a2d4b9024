"""The shipped ``grounded`` expert (issue 17, part 4): SmolLM2 with experts/adapters/grounded, trained to emit
``<|recall|>``/``<|explain|>``. Registered by the config snippet of benchmarks/controls_grounded.toml. With the
default settings (``[controls] generate = "auto"``) it emits control tokens on held-out SQuAD questions, which steer
its sampler (``stats.segments``) and never reach ``Answer.text``; with ``generate = false``, and on an engine whose
controls are off that shares its pool, it never draws one. A pool of this module's own: loading the expert writes its
trained control rows into that SmolLM2."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from asymmetry import Assistant
from asymmetry.config import Config
from asymmetry.datasets import load_qa
from asymmetry.engine import Engine, Request
from asymmetry.experts import ModelPool
from asymmetry.experts.config import adapters_package_dir
from asymmetry.experts.controls import adapter_controls

SNIPPET = Path(__file__).resolve().parents[2] / "benchmarks" / "controls_grounded.toml"
QWEN_SNIPPET = SNIPPET.with_name("controls_grounded_qwen.toml")  # the same expert trained on Qwen2.5-Coder-0.5B
QUESTIONS = 2  # the first held-out SQuAD questions (never trained on: the adapter trains on the tune part)
CONTROL_NAMES = ("recall", "explain")


@pytest.fixture(scope="module")
def pool():
    return ModelPool()


def _config(**controls) -> Config:
    data = tomllib.loads(SNIPPET.read_text(encoding="utf-8"))
    if controls:
        data["controls"] = controls
    return Config.from_dict(data)


def test_the_shipped_expert_emits_controls_that_steer_and_never_reach_the_text(pool):
    assert adapter_controls(adapters_package_dir() / "grounded") is not None  # its card records the vocabulary
    bot = Assistant(_config(), pool=pool)
    emitted = []
    for item in load_qa("squad", "heldout")[:QUESTIONS]:
        answer = bot.ask(item.question, expert="grounded", sampler={"max_tokens": 24, "seed": 0})
        assert answer.text.strip() and "<|" not in answer.text
        segments = [s for s in answer.stats["segments"] if s["control"] is not None]
        emitted += [s["control"] for s in segments]
        for seg in segments:  # recall: mirostat at tau 1.5, explain: at tau 4
            assert seg["tau"] == {"recall": 1.5, "explain": 4.0}.get(seg["control"], seg["tau"])
    assert emitted and set(emitted) <= set(CONTROL_NAMES) | {None}, emitted


def _greedy_tokens(engine: Engine) -> tuple[list[int], object]:
    """The greedy reply's token ids to a question, decoded as ``Engine.stream`` decodes the plan."""
    plan = engine.plan(Request("Who wrote Hamlet?", expert="grounded", sampler={"greedy": True, "max_tokens": 12}))
    gen = engine._generator(plan.model.base)
    out = gen.generate(plan.prompt_ids, plan.sampler, row_kwargs=plan.row_kwargs, emit_controls=plan.emit_controls)
    assert "<|" not in out.text
    return out.tokens, plan


@pytest.mark.slow  # three engines, three greedy decodes with retrieval: about 160 s on the loaded 2-core machine
def test_masked_controls_are_never_drawn_even_by_an_engine_with_controls_off_on_the_same_pool(pool):
    tokens, plan = _greedy_tokens(Engine(_config(), pool=pool))
    base = plan.model.base
    assert plan.emit_controls and base.control_ids, "planning the expert gives its base the control tokens"
    assert tokens[0] in base.control_ids  # trained: its greedy reply starts with a control
    for config in (_config(generate=False), _config(enabled=False)):
        tokens, plan = _greedy_tokens(Engine(config, pool=pool))
        assert not plan.emit_controls and plan.model.base is base
        assert tokens and not set(tokens) & set(base.control_ids)


def test_the_qwen_expert_starts_its_answer_with_a_trained_control_and_answers_from_its_sources(pool):
    """grounded-qwen (train-defaults grounded-qwen) with the defaults of its snippet: on a held-out SQuAD question its
    reply starts with a control it was trained to emit, the segment's sampler is that control's, no control reaches
    the text."""
    assert adapter_controls(adapters_package_dir() / "grounded-qwen") is not None
    bot = Assistant(Config.from_dict(tomllib.loads(QWEN_SNIPPET.read_text(encoding="utf-8"))), pool=pool)
    item = load_qa("squad", "heldout")[0]
    answer = bot.ask(item.question, expert="grounded-qwen", sampler={"max_tokens": 24, "seed": 0})
    assert answer.expert == "grounded-qwen" and answer.text.strip() and "<|" not in answer.text
    segments = answer.stats["segments"]
    first = next(s for s in segments if s["control"] is not None)  # after the empty segment the prompt set
    assert first["start"] == 1 and first["control"] in CONTROL_NAMES, segments  # token 0 is the control itself
    assert first["tau"] == {"recall": 1.5, "explain": 4.0}[first["control"]]
