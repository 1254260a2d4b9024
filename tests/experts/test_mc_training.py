"""The multiple-choice training loss (``mc_weight``): every option scored as the reply, a cross-entropy over the
options ranked by mean log-prob per option token, beside the right answer's own cross-entropy. On the real SmolLM2."""

from __future__ import annotations

import pytest
import torch

from asymmetry.errors import AsymmetryError, ConfigError
from asymmetry.experts.data import ChatExample, mc_messages
from asymmetry.experts.prompts import with_system
from asymmetry.experts.training import AdapterTrainSettings, _answer_and_option_loss, _encode_options, train_adapter

QUESTIONS = [
    ("What gas do plants take in from the air?", ["oxygen", "carbon dioxide", "helium"], 1),
    ("What is frozen water called?", ["steam", "sand", "ice", "glass"], 2),
    ("Which organ pumps blood through the body?", ["the heart", "the lungs", "the liver"], 0),
    ("What do bees make?", ["silk", "milk", "honey"], 2),
    ("What force pulls objects toward the Earth?", ["gravity", "magnetism", "friction"], 0),
    ("What is the closest star to the Earth?", ["Sirius", "the Sun", "Polaris", "Vega"], 1),
]
EXAMPLES = [ChatExample(mc_messages(q, opts, gold), source="test", choices=opts, gold=gold) for q, opts, gold in QUESTIONS]


def _mean_option_logprob(model, ids: list[int], text_tokens: int, answer_tokens: int) -> torch.Tensor:
    """Mean log-prob of the option text's tokens, from one unpadded forward of the whole sequence."""
    logits = model(input_ids=torch.tensor([ids])).logits[0].float()  # (T, V)
    logp = torch.log_softmax(logits[:-1], dim=-1)  # (T-1, V): position t predicts token t+1
    start = len(ids) - answer_tokens  # first answer token
    targets = torch.tensor(ids[start:start + text_tokens])
    return logp[start - 1:start - 1 + text_tokens].gather(-1, targets[:, None]).mean()


def test_option_loss_equals_one_forward_per_option(smollm):
    """The batched loss (left-padded rows of every option, one forward) equals the same loss computed from one
    unpadded forward per option."""
    model, tok = smollm.model, smollm.tokenizer
    chunk = []
    for ex in EXAMPLES[:3]:
        messages = with_system(ex.messages, "Answer the question.")
        chunk.append((None, None, _encode_options(tok, messages, ex, 128)))
    with torch.no_grad():
        got = _answer_and_option_loss(model, chunk, tok.pad_token_id, 0.5)
        option_ce, answer_sum, answer_n = [], 0.0, 0
        for _, _, (rows, gold) in chunk:
            means = torch.stack([_mean_option_logprob(model, ids, t, n) for ids, n, t in rows])  # (O,)
            option_ce.append(torch.nn.functional.cross_entropy(means[None], torch.tensor([gold])))
            ids, n, _ = rows[gold]
            logits = model(input_ids=torch.tensor([ids])).logits[0].float()
            logp = torch.log_softmax(logits[:-1], dim=-1)
            answer_sum += float(logp[len(ids) - n - 1:].gather(-1, torch.tensor(ids[len(ids) - n:])[:, None]).sum())
            answer_n += n
    want = -answer_sum / answer_n + 0.5 * float(torch.stack(option_ce).mean())
    assert float(got) == pytest.approx(want, abs=2e-4)
    # the end-of-turn marker is in the answer's rows but not in what ranks the options
    rows = chunk[0][2][0]
    assert all(n > t for _, n, t in rows)


def _margins(model, tok) -> float:
    """Mean over the examples of the right option's mean log-prob minus the best wrong option's."""
    total = 0.0
    with torch.no_grad():
        for ex in EXAMPLES:
            rows, gold = _encode_options(tok, ex.messages, ex, 128)
            means = [float(_mean_option_logprob(model, ids, t, n)) for ids, n, t in rows]
            total += means[gold] - max(m for i, m in enumerate(means) if i != gold)
    return total / len(EXAMPLES)


def test_training_with_the_option_loss_widens_the_right_options_margin(smollm, tmp_path):
    """Six steps on six questions: the right option's lead over the best wrong one grows, and more than with the
    answer's loss alone (same data, steps and seed; measured 0.11 -> 4.3 nats, against 3.4)."""
    tok = smollm.tokenizer
    before = _margins(smollm.model, tok)
    after = {}
    for weight in (1.0, 0.0):
        settings = AdapterTrainSettings(max_steps=6, batch_size=3, max_length=96, eval_size=0, lr=5e-3, rank=4,
                                        alpha=8, mc_weight=weight, checkpoint_every=10)
        result = train_adapter(f"mc{weight:g}", EXAMPLES, tmp_path / f"mc{weight:g}", settings=settings, progress=False)
        after[weight] = _margins(result.model.eval(), tok)
    assert after[1.0] > before + 0.5, (before, after)
    assert after[1.0] > after[0.0] + 0.3, (before, after)


def test_option_loss_settings_and_bad_examples_are_refused(smollm):
    with pytest.raises(ConfigError, match="mc_weight"):
        AdapterTrainSettings(mc_weight=-1.0)
    bad = ChatExample(mc_messages("Q?", ["a", "b"], 0), source="bad.jsonl", choices=["a", "b"], gold=2)
    with pytest.raises(AsymmetryError, match="bad.jsonl.*gold=2 for 2 choices"):
        _encode_options(smollm.tokenizer, bad.messages, bad, 64)
