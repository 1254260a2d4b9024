"""Chat-template tokenization and left-padded batches, shared by training and option scoring (the messages and
their text come from :mod:`asymmetry.experts.prompts`).

Dimension letters: B batch rows, T padded sequence length, K answer positions kept at the end, V vocabulary.

Batches are LEFT padded so that every row's answer sits at the end: the model then computes logits only for the last
``K`` positions (``logits_to_keep``), which matters for the 150k-word Qwen vocabulary. Position ids count real tokens
only, so a padded row is computed exactly like the unpadded one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from asymmetry.experts.prompts import render_prompt
from asymmetry.forward import left_pad as left_pad_rows


def encode_example(
    tokenizer, messages: list[dict[str, str]], max_length: int, template: str | None = None
) -> tuple[list[int], int]:
    """Token ids of a conversation whose last message is the assistant's answer, and how many trailing tokens are
    the answer (its text plus the end-of-turn marker). Long prompts are cut from the left, keeping the answer."""
    full = render_prompt(tokenizer, messages, template, add_generation_prompt=False)
    prefix = render_prompt(tokenizer, messages[:-1], template)
    if not full.startswith(prefix):  # templates that rewrite earlier turns: fall back to prefix + answer
        full = prefix + messages[-1]["content"] + (tokenizer.eos_token or "")
    p_ids = tokenizer(prefix, add_special_tokens=False)["input_ids"]
    a_ids = tokenizer(full[len(prefix):], add_special_tokens=False)["input_ids"]
    a_ids = a_ids[: max_length // 2]
    p_ids = p_ids[-(max_length - len(a_ids)):]
    return p_ids + a_ids, len(a_ids)


@dataclass
class Batch:
    input_ids: torch.Tensor  # (B, T)
    attention_mask: torch.Tensor  # (B, T)
    position_ids: torch.Tensor  # (B, T)
    labels: torch.Tensor  # (B, K) target ids of the last K positions, -100 where not trained/scored
    keep: int  # K


def left_pad(sequences: list[list[int]], answer_lengths: list[int], pad_id: int) -> Batch:
    """Left-pad ``sequences`` (:func:`asymmetry.forward.left_pad`); ``labels`` marks each row's last
    ``answer_lengths[i]`` tokens."""
    ids, mask, position_ids = left_pad_rows(sequences, pad_id)  # (B, T) each
    keep = max(answer_lengths)
    labels = torch.full((len(sequences), keep), -100, dtype=torch.long)  # (B, K)
    for i, (seq, n) in enumerate(zip(sequences, answer_lengths)):
        if n:
            labels[i, keep - n:] = torch.tensor(seq[len(seq) - n:])
    return Batch(ids, mask, position_ids, labels, keep)


def answer_logprobs(model, batch: Batch, **forward_kwargs) -> torch.Tensor:
    """Per-token log-probabilities of the labelled answer tokens, ``(B, K)``, zero where unlabelled."""
    out = model(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        position_ids=batch.position_ids,
        logits_to_keep=batch.keep + 1,
        use_cache=False,
        **forward_kwargs,
    )
    logits = out.logits[:, :-1].float()  # (B, K, V): position t predicts token t+1
    logp = torch.log_softmax(logits, dim=-1)  # (B, K, V)
    target = batch.labels.clamp(min=0)  # (B, K)
    picked = logp.gather(-1, target.unsqueeze(-1)).squeeze(-1)  # (B, K)
    return picked * (batch.labels != -100)


def answer_loss(model, batch: Batch, **forward_kwargs) -> torch.Tensor:
    """Mean cross-entropy over the labelled answer tokens of the batch (a scalar)."""
    picked = answer_logprobs(model, batch, **forward_kwargs)  # (B, K)
    return -picked.sum() / (batch.labels != -100).sum().clamp(min=1)
