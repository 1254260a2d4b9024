"""Control tokens on the engine's path (issue 17, part 3): a control written in the question steers the sampler of
``Assistant.ask``/``stream``, ``asymmetry ask --json`` and the server's continuous batch, per row; control tokens
never reach an answer or a stream chunk; ``stats.segments`` lists them. The small line-up's SmolLM2 on a pool of
this module's own (the control tokens are added to that base; the session's SmolLM2 stays as it is)."""

from __future__ import annotations

import json
import threading

import openai
import pytest

from asymmetry import Assistant
from asymmetry.cli import main
from asymmetry.config import Config
from asymmetry.engine import Engine, Request
from asymmetry.experts import ModelPool
from asymmetry.sampling.controls import ControlsConfig
from tests.server.test_server import running_server

SMALL = {"experts": {"lineup": "small"}}
PLAIN_Q = "Name a planet of the solar system."
GREEDY = {"max_tokens": 10, "temperature": 0}
SAMPLED = {"max_tokens": 12, "seed": 1}
OFF = {"expert": "general", "retrieval": False}
N_CONTROLS = len(ControlsConfig().tokens)


@pytest.fixture(scope="module")
def pool():
    return ModelPool()


@pytest.fixture(scope="module")
def bot(pool):
    return Assistant(Config.from_dict(SMALL), pool=pool)


def _segments(answer) -> list[tuple]:
    return [(s["control"], s["start"], s["end"], s["tau"]) for s in answer.stats["segments"]]


def test_a_control_in_the_question_steers_the_answer_and_leaves_other_answers_as_they_were(bot):
    base = bot.engine.expert("general")[1].base
    words = len(base.tokenizer)
    before = bot.ask(PLAIN_Q, sampler=GREEDY, **OFF)
    assert len(base.tokenizer) == words, "a base no request steered keeps its tokenizer"
    assert _segments(before) == [(None, 0, before.stats["completion_tokens"], None)]

    plan = bot.prepare("<|tau=3|>Tell me about the sea.", sampler=SAMPLED, **OFF)
    assert plan.controls == ["tau=3"] and len(base.tokenizer) == words + N_CONTROLS
    assert base.tokenizer.convert_tokens_to_ids("<|tau=3|>") in plan.prompt_ids  # one token in the prompt
    stream = bot.engine.stream(plan)
    chunks = list(stream)
    answer = stream.answer
    assert answer.text.strip() and "".join(chunks) == answer.text
    assert not any("<|" in c or "tau=" in c for c in chunks)
    assert _segments(answer) == [("tau=3", 0, answer.stats["completion_tokens"], 3.0)]
    assert "mirostat" in answer.stats["stages"] and answer.stats["segments"][0]["mean_surprise_bits"] is not None
    assert answer.stats["rows"] == 1  # a prompt control needs no extra row

    recall = bot.ask("<|recall|>Tell me about the sea.", sampler=SAMPLED, **OFF)
    assert _segments(recall) == [("recall", 0, recall.stats["completion_tokens"], 1.5)] and "<|" not in recall.text
    formal = bot.ask("<|formal|>Tell me about the sea.", sampler=GREEDY, **OFF)
    assert "cfg" in formal.stats["stages"] and formal.stats["rows"] == 2  # CFG against the plain rubric
    assert _segments(formal) == [("formal", 0, formal.stats["completion_tokens"], None)]

    after = bot.ask(PLAIN_Q, sampler=GREEDY, **OFF)  # the base now holds the tokens: no control, the same answer
    assert after.text == before.text and after.stats["stages"] == before.stats["stages"]


def test_the_router_and_the_retriever_read_the_question_without_its_controls(bot):
    plain, steered = (bot.prepare(q, sampler=GREEDY, expert="general")
                      for q in ("What is photosynthesis?", "<|explain|>What is photosynthesis?"))
    assert steered.controls == ["explain"] and plain.controls == []
    assert [s.title for s in steered.sources] == [s.title for s in plain.sources] and plain.sources
    assert (steered.embedding == plain.embedding).all()


def test_ask_json_lists_the_segments(tmp_path, capsys):
    config = tmp_path / "small.toml"
    config.write_text('[experts]\nlineup = "small"\n', encoding="utf-8")
    assert main(["--config", str(config), "ask", "<|tau=2|>Tell me about the sea.", "--expert", "general",
                 "--no-retrieval", "--max-tokens", "8", "--seed", "1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    (seg,) = out["stats"]["segments"]
    assert seg["control"] == "tau=2" and seg["tau"] == 2.0 and (seg["start"], seg["end"]) == (0, 8)
    assert out["answer"].strip() and "<|" not in out["answer"]


def test_the_servers_batch_obeys_a_rows_controls_beside_a_row_without(pool):
    """Two requests at once in the server's batch: one with a control (CFG against the formal rubric: two rows),
    one without; each equals its answer decoded alone (greedy), and the response lists the segments."""
    solo = Engine(Config.from_dict(SMALL), pool=pool)
    questions = {"steered": "<|plain|>Describe the sea.", "plain": "Describe a forest."}
    alone = {}
    for name, question in questions.items():
        stream = solo.stream(solo.plan(Request(question=question, expert="general", retrieval=False,
                                               sampler=dict(GREEDY))))
        alone[name] = stream.text()
    replies, chunks, barrier = {}, {}, threading.Barrier(2)

    def call(name, url):
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=600)
        barrier.wait()
        parts, last = [], None
        for chunk in client.chat.completions.create(
                model="general", messages=[{"role": "user", "content": questions[name]}], stream=True,
                extra_body={"retrieval": False}, **GREEDY):
            if chunk.choices and chunk.choices[0].delta.content:
                parts.append(chunk.choices[0].delta.content)
            last = chunk.model_extra.get("asymmetry") or last
        chunks[name], replies[name] = parts, last

    with running_server(Engine(Config.from_dict(SMALL), pool=pool)) as url:
        threads = [threading.Thread(target=call, args=(name, url)) for name in questions]
        for t in threads:
            t.start()
        for t in threads:
            t.join(600)
    for name in questions:
        assert "".join(chunks[name]) == alone[name], name
        assert not any("<|" in c for c in chunks[name])
    steered, plain = replies["steered"]["stats"], replies["plain"]["stats"]
    assert max(steered["shared_steps"], plain["shared_steps"]) > 0, "the two requests shared decode steps"
    assert steered["rows"] == 2 and "cfg" in steered["stages"] and plain["rows"] == 1
    assert [(s["control"], s["start"], s["end"]) for s in steered["segments"]] == [
        ("plain", 0, steered["completion_tokens"])]
    assert [s["control"] for s in plain["segments"]] == [None]

