"""Plain transformers baselines for ``asymmetry eval qa --baseline hf``: greedy ``generate`` on a bare base.

The base comes from the engine's :class:`~asymmetry.experts.ModelPool` (the same placement as the experts), so no
second copy of a model is loaded. A forward that names no adapter runs the bare base (the pool leaves no adapter
active), and ``generate`` runs under the pooled base's lock for its whole length: no other request's per-row adapter
hooks can be on the shared modules meanwhile.

Two prompts per question, in the tokenizer's chat template:

- ``passages``: system "Answer the question using the passages.", user ``"Passages:\\n[1] title: text\\n...\\n\\n
  Question: ..."`` with the passages our plan put into its prompt (a question whose plan holds none gets the closed
  prompt: the two systems then share that answer);
- ``closed``: the question alone as the user message.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from asymmetry.experts import PooledBase
from asymmetry.experts.prompts import render_prompt

SYSTEM = "Answer the question using the passages."
VARIANTS = ("passages", "closed")


def system_name(base: str, variant: str) -> str:
    """The name of a baseline system in the report: ``hf:<base>:passages`` or ``hf:<base>:closed``."""
    return f"hf:{base}:{variant}"


def passages_messages(question: str, passages: Sequence[tuple[str, str]]) -> list[dict[str, str]]:
    """The ``passages`` prompt of ``(title, text)`` pairs, numbered from 1; without passages the closed prompt."""
    if not passages:
        return closed_messages(question)
    block = "\n".join(f"[{i}] {title}: {text}" for i, (title, text) in enumerate(passages, 1))
    return [{"role": "system", "content": SYSTEM},
            {"role": "user", "content": f"Passages:\n{block}\n\nQuestion: {question}"}]


def closed_messages(question: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": question}]


@dataclass
class BaselineAnswer:
    text: str
    seconds: float
    prompt_tokens: int
    completion_tokens: int


def _eos_ids(model, tokenizer) -> list[int]:
    ids: list[int] = []
    for value in (getattr(model.generation_config, "eos_token_id", None), tokenizer.eos_token_id):
        for v in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(v, int) and v not in ids:
                ids.append(v)
    return ids


def hf_generate(base: PooledBase, messages: list[dict[str, str]], max_new_tokens: int) -> BaselineAnswer:
    """Greedy ``model.generate`` (``do_sample=False``) of the bare ``base`` on ``messages`` in its chat template."""
    import torch
    from transformers import GenerationConfig

    t0 = time.perf_counter()
    tokenizer = base.tokenizer
    model = base.loaded.model  # the transformers model: pooled LoRA layers on it have no active adapter
    text = render_prompt(tokenizer, messages)
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]  # (1, T)
    eos = _eos_ids(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos[0] if eos else 0)
    gen_cfg = GenerationConfig(do_sample=False, max_new_tokens=max_new_tokens, eos_token_id=eos or None,
                               pad_token_id=pad)
    embeddings = model.get_input_embeddings().weight
    with base.lock, torch.no_grad():
        out = model.generate(input_ids=ids.to(embeddings.device), attention_mask=torch.ones_like(ids).to(
            embeddings.device), generation_config=gen_cfg)  # (1, T + new)
    new = out[0, ids.shape[1]:].tolist()
    while new and new[-1] in eos:
        new.pop()
    return BaselineAnswer(text=tokenizer.decode(new, skip_special_tokens=True).strip(),
                          seconds=time.perf_counter() - t0, prompt_tokens=int(ids.shape[1]),
                          completion_tokens=len(new))
