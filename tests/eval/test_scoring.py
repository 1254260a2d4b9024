"""Shared-prefix batched option scoring on the real default model, checked against full forward passes."""

from __future__ import annotations

import pytest
import torch

from asymmetry.datasets import load_mc
from asymmetry.errors import AsymmetryError
from asymmetry.eval.scoring import encode_pair, score_batch, score_options, score_options_naive
from asymmetry.experts import ExpertRegistry
from asymmetry.experts.config import ExpertsConfig


@pytest.fixture(scope="module")
def questions():
    # ARC-Easy validation questions with 4 and 3 options and prompts of different lengths (left padding is used)
    qs = load_mc("arc_easy", "validation")
    picked = [qs[0], qs[1]] + [q for q in qs if len(q.options) != 4][:1]
    assert len({len(q.options) for q in picked}) > 1
    return [(f"Question: {q.question}\nAnswer:", [" " + o for o in q.options]) for q in picked]


def test_batched_matches_one_forward_per_option(smollm, questions):
    model, tok = smollm.model, smollm.tokenizer
    batched = score_batch(model, tok, [p for p, _ in questions], [o for _, o in questions])
    for (prefix, opts), res in zip(questions, batched):
        reference = score_options_naive(model, tok, prefix, opts)
        torch.testing.assert_close(torch.tensor(res.loglik), torch.tensor(reference), atol=2e-3, rtol=1e-4)
        assert res.n_tokens == [len(encode_pair(tok, prefix, o)[1]) for o in opts]
        assert all(ll < 0 for ll in res.loglik)


def test_normalisations(smollm, questions):
    model, tok = smollm.model, smollm.tokenizer
    prefix, opts = questions[0]
    res = score_batch(model, tok, [prefix], [opts])[0]
    per_token = score_options(model, tok, prefix, opts, normalize="token")
    per_char = score_options(model, tok, prefix, opts, normalize="char")
    torch.testing.assert_close(torch.tensor(per_token), torch.tensor([a / n for a, n in zip(res.loglik, res.n_tokens)]))
    torch.testing.assert_close(torch.tensor(per_char), torch.tensor([a / len(o.strip()) for a, o in zip(res.loglik, opts)]))
    with pytest.raises(AsymmetryError, match="invalid normalize='bytes'"):
        score_options(model, tok, prefix, opts, normalize="bytes")


def test_cfg_scores_match_guided_distribution(smollm, questions):
    """CFG option score = sum over option tokens of log_softmax(u + s (c - u)), from two full forward passes."""
    model, tok = smollm.model, smollm.tokenizer
    prefix, opts = questions[1][0], questions[1][1][:2]  # two options keep the reference passes short
    scale, uncond = 1.5, "Answer:"
    got = score_options(model, tok, prefix, opts, cfg_scale=scale, unconditional_prefix=uncond)
    expected = []
    with torch.inference_mode():
        for opt in opts:
            c_pre, c_opt = encode_pair(tok, prefix, opt)
            u_pre, u_opt = encode_pair(tok, uncond, opt)
            assert c_opt == u_opt
            c = model(input_ids=torch.tensor([c_pre + c_opt])).logits[0, len(c_pre) - 1 : -1]  # O V
            u = model(input_ids=torch.tensor([u_pre + u_opt])).logits[0, len(u_pre) - 1 : -1]  # O V
            logp = torch.log_softmax(u + scale * (c - u), dim=-1)  # O V
            expected.append(float(logp.gather(-1, torch.tensor(c_opt)[:, None]).sum()))
    torch.testing.assert_close(torch.tensor(got), torch.tensor(expected), atol=2e-3, rtol=1e-4)
    plain = score_options(model, tok, prefix, opts)
    assert got != pytest.approx(plain)
    assert score_options(model, tok, prefix, opts, cfg_scale=1.0) == pytest.approx(plain)


def test_bad_arguments(smollm):
    model, tok = smollm.model, smollm.tokenizer
    with pytest.raises(AsymmetryError, match="has no options"):
        score_batch(model, tok, ["Question: x\nAnswer:"], [[]])
    with pytest.raises(AsymmetryError, match="2 prefixes but 1 option lists"):
        score_batch(model, tok, ["a", "b"], [[" x"]])


def test_option_scorer_with_per_row_adapters_equals_full_sequences(pool):
    """The one scorer, prefix shared and adapters named per row, equals scoring each full sequence alone. (The small
    line-up: its commonsense expert is a LoRA adapter on SmolLM2; the default line-up's experts have no adapter.)"""
    from asymmetry.datasets import MCQuestion
    from asymmetry.eval.compare import option_scores, question_prompt
    from asymmetry.eval.metrics import option_metrics

    expert = ExpertRegistry.from_config(ExpertsConfig(lineup="small"), pool=pool).model("commonsense")
    tok = expert.tokenizer
    q = MCQuestion("q1", "What do bees make?", ["honey", "steel beams", "ice"], 0, "test")
    shared = option_scores(expert.model, tok, [q], adapter_names=["commonsense", "__base__"], lock=expert.lock)
    prefix, options = question_prompt(tok, q)
    for name, got in zip(("commonsense", "__base__"), shared):
        for (total, n_tok), option in zip(got, options):
            p_ids = tok(prefix, add_special_tokens=False).input_ids
            ids = tok(prefix + option, add_special_tokens=False).input_ids
            with torch.no_grad(), expert.lock:
                logits = expert.model(input_ids=torch.tensor([ids]), adapter_names=[name]).logits[0]  # (T, V)
            logp = torch.log_softmax(logits[:-1].float(), -1).gather(-1, torch.tensor(ids[1:])[:, None])[:, 0]
            assert n_tok == len(ids) - len(p_ids)
            torch.testing.assert_close(torch.tensor(total), logp[len(p_ids) - 1:].sum(), atol=2e-3, rtol=1e-4)
    assert shared[0] != shared[1], "the adapter row and the bare row must differ"
    metrics = option_metrics([q.answer], shared[:1])
    assert set(metrics) == {"accuracy", "accuracy_sum", "gold_prob", "n"} and 0 < metrics["gold_prob"] < 1
