"""``logprobs`` / ``top_logprobs`` of ``asymmetry serve`` (issue 18) through the real ``openai`` client against a
real uvicorn: the chat and legacy completions shapes parse in the client's types, greedy picks the top alternative,
the tokens rebuild the text, a stream carries the same entries as the whole answer, requests with and without
logprobs (one with CFG rows) share a batch, and bad values are 400s naming the field. Small line-up, short answers.
"""

from __future__ import annotations

import threading

import openai
import pytest
from openai.types.chat.chat_completion_token_logprob import ChatCompletionTokenLogprob
from openai.types.completion_choice import Logprobs

from asymmetry.experts import ModelPool
from tests.server.test_server import running_server, small_engine

QUESTION = [{"role": "user", "content": "Name a planet of the solar system."}]
NO_RETRIEVAL = {"retrieval": False}


@pytest.fixture(scope="module")
def client():
    with running_server(small_engine(ModelPool())) as url:
        yield openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=300)


def chat(client, messages=QUESTION, max_tokens: int = 8, extra_body=None, **kw):
    return client.chat.completions.create(model="general", messages=messages, max_tokens=max_tokens, temperature=0,
                                          extra_body={**NO_RETRIEVAL, **(extra_body or {})}, **kw)


def check_chat_entries(content: list, text: str, n_top: int) -> None:
    assert content and all(isinstance(e, ChatCompletionTokenLogprob) for e in content)
    assert "".join(e.token for e in content) == text
    for e in content:
        values = [a.logprob for a in e.top_logprobs]
        assert len(e.top_logprobs) == n_top and values == sorted(values, reverse=True) and e.logprob <= 0
        assert e.bytes == list(e.token.encode("utf-8"))
        assert (e.top_logprobs[0].token, e.top_logprobs[0].logprob) == (e.token, e.logprob)  # greedy: the top one


def test_chat_logprobs_parse_and_greedy_picks_the_top_alternative(client):
    r = chat(client, logprobs=True, top_logprobs=3)
    content = r.choices[0].logprobs.content
    check_chat_entries(content, r.choices[0].message.content, 3)
    assert len(content) == r.usage.completion_tokens
    assert chat(client, max_tokens=2).choices[0].logprobs is None  # not asked: none
    bare = chat(client, logprobs=True).choices[0].logprobs.content  # no top_logprobs: no alternatives
    assert [e.top_logprobs for e in bare] == [[]] * len(bare) and [e.token for e in bare] == [e.token for e in content]


def test_streamed_chat_logprobs_equal_the_whole_answer(client):
    whole = chat(client, logprobs=True, top_logprobs=2).choices[0]
    chunks = list(chat(client, logprobs=True, top_logprobs=2, stream=True))
    streamed = [e for c in chunks if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.message.content
    check_chat_entries(streamed, text, 2)
    assert [(e.token, e.logprob, [a.token for a in e.top_logprobs]) for e in streamed] == \
        [(e.token, e.logprob, [a.token for a in e.top_logprobs]) for e in whole.logprobs.content]
    for c in chunks:  # each content chunk carries the entries of its own text
        if c.choices and c.choices[0].delta.content:
            assert "".join(e.token for e in c.choices[0].logprobs.content) == c.choices[0].delta.content


def test_completions_give_the_legacy_shape(client):
    r = client.completions.create(model="general", prompt="The capital of France is", max_tokens=5, temperature=0,
                                  logprobs=2)
    lp, text = r.choices[0].logprobs, r.choices[0].text
    assert isinstance(lp, Logprobs) and "".join(lp.tokens) == text and len(lp.tokens) == r.usage.completion_tokens
    assert lp.text_offset == [len("".join(lp.tokens[:i])) for i in range(len(lp.tokens))]
    for token, value, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
        assert 1 <= len(top) <= 2 and value <= 0 and top[token] == value == max(top.values())
    chunks = list(client.completions.create(model="general", prompt="The capital of France is", max_tokens=5,
                                            temperature=0, logprobs=2, stream=True))
    parts = [c.choices[0].logprobs for c in chunks if c.choices[0].logprobs]
    assert [t for p in parts for t in p.tokens] == lp.tokens
    assert [o for p in parts for o in p.text_offset] == lp.text_offset


def test_requests_with_and_without_logprobs_and_cfg_rows_share_a_batch(client):
    jobs = [{"logprobs": True, "top_logprobs": 2, "extra_body": {"cfg_scale": 1.5, "negative_prompt": "Be rude."}},
            {"messages": [{"role": "user", "content": "What is the capital of France?"}]}]
    sequential = [chat(client, **job) for job in jobs]
    results: dict[int, object] = {}
    barrier = threading.Barrier(2)

    def run(i: int) -> None:
        barrier.wait()
        results[i] = chat(client, **jobs[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert [results[i].choices[0].message.content for i in range(2)] == \
        [r.choices[0].message.content for r in sequential]
    assert results[1].choices[0].logprobs is None
    together, alone = results[0].choices[0].logprobs.content, sequential[0].choices[0].logprobs.content
    check_chat_entries(together, results[0].choices[0].message.content, 2)
    assert [e.token for e in together] == [e.token for e in alone]
    assert [e.logprob for e in together] == pytest.approx([e.logprob for e in alone], abs=2e-3)
    stats = results[0].model_extra["asymmetry"]["stats"]
    assert stats["rows"] == 2 and stats["shared_steps"] > 0 and stats["max_batch_rows"] == 3


@pytest.mark.parametrize(("kw", "param", "words"), [
    ({"top_logprobs": 2}, "top_logprobs", '"logprobs": true'),
    ({"logprobs": False, "top_logprobs": 2}, "top_logprobs", '"logprobs": true'),
    ({"logprobs": True, "top_logprobs": 21}, "top_logprobs", "from 0 to 20"),
    ({"logprobs": True, "top_logprobs": -1}, "top_logprobs", "from 0 to 20"),
    ({"logprobs": True, "top_logprobs": True}, "top_logprobs", "from 0 to 20"),
    ({"extra_body": {"logprobs": 3}}, "logprobs", "true or false"),
])
def test_bad_chat_logprobs_are_400s_naming_the_field(client, kw, param, words):
    with pytest.raises(openai.BadRequestError) as exc:
        chat(client, max_tokens=2, **kw)
    body = exc.value.body
    assert body["param"] == param and body["type"] == "invalid_request_error" and words in body["message"], body


@pytest.mark.parametrize("value", [6, -1, True, "2"])
def test_bad_completions_logprobs_are_400s_naming_the_field(client, value):
    with pytest.raises(openai.BadRequestError) as exc:
        client.completions.create(model="general", prompt="Hello", max_tokens=2, extra_body={"logprobs": value})
    assert exc.value.body["param"] == "logprobs" and "from 0 to 5" in exc.value.body["message"], exc.value.body


def test_serve_help_says_what_the_logprobs_describe():
    from asymmetry.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command").choices["serve"]
    text = " ".join(sub.format_help().split())
    assert "top_logprobs (0-20)" in text and "logprobs (0-5)" in text
    assert "after CFG/mixture combination and before penalties, grammar, temperature and truncation" in text
