"""Option log-likelihood scoring of multiple-choice questions, and the expert-vs-base comparison.

Dimension letters: B batch rows, K answer positions, V vocabulary.

``cloze`` questions: each option's text is scored as the assistant's reply to the question (sum of token
log-probabilities); the prediction is the option with the highest mean log-probability per token (``accuracy``, the
primary metric) or highest sum (``accuracy_sum``). ``lettered`` questions: the options are listed with letters and
each option is scored by the log-probability of its letter as the first reply token. ``gold_prob`` is the softmax over
the options' (sum) scores, averaged for the gold option: a smooth measure of the same thing.

One batch can score several experts at once: rows carry peft's ``adapter_names`` (``__base__`` for the bare base), so
:func:`compare_expert` scores base and expert in the same forward passes.
"""

from __future__ import annotations

import math
import random
from typing import Any

import torch
from asymmetry.experts.data import LETTERS, mc_messages
from asymmetry.experts.tokens import Batch, left_pad, prompt_text, with_system

PRIMARY_METRIC = "accuracy"


def _cloze_rows(tokenizer, question, system_prompt: str | None, template: str | None):
    prefix = prompt_text(tokenizer, with_system(mc_messages(question.question, question.options, None), system_prompt),
                         template)
    p_ids = tokenizer(prefix, add_special_tokens=False)["input_ids"]
    rows = []
    for opt in question.options:
        o_ids = tokenizer(opt, add_special_tokens=False)["input_ids"] or [tokenizer.eos_token_id]
        rows.append((p_ids + o_ids, len(o_ids)))
    return rows


def _cloze_shared_prefix(model, prefix: list[int], options: list[list[int]], names: list[str | None],
                         pad_id: int) -> list[list[tuple[float, int]]]:
    """Score every option of one question for each adapter name, running the shared prompt ONCE per name.

    Dimension letters here: N names, O options, P prompt length, L longest option.
    """
    n_names, n_opts = len(names), len(options)
    kwargs: dict[str, Any] = {"adapter_names": list(names)} if names[0] is not None else {}
    prompt = torch.tensor([prefix] * n_names)  # (N, P)
    out = model(input_ids=prompt, use_cache=True, logits_to_keep=1, **kwargs)
    first = torch.log_softmax(out.logits[:, -1].float(), dim=-1)  # (N, V): predicts each option's first token
    cache = out.past_key_values if getattr(out, "cache", None) is None else out.cache
    cache.batch_repeat_interleave(n_opts)  # rows: name0/opt0, name0/opt1, ..., name1/opt0, ...
    width = max(len(o) for o in options)
    ids = torch.full((n_opts, width), pad_id, dtype=torch.long)  # (O, L) right padded
    mask = torch.zeros((n_opts, width), dtype=torch.long)  # (O, L)
    for i, o in enumerate(options):
        ids[i, :len(o)] = torch.tensor(o)
        mask[i, :len(o)] = 1
    ids, mask = ids.repeat(n_names, 1), mask.repeat(n_names, 1)  # (N*O, L)
    full_mask = torch.cat([torch.ones((n_names * n_opts, len(prefix)), dtype=torch.long), mask], dim=1)  # (N*O, P+L)
    positions = (len(prefix) + torch.arange(width)).expand(n_names * n_opts, width)  # (N*O, L)
    if kwargs:
        kwargs = {"adapter_names": [n for n in names for _ in range(n_opts)]}
    out = model(input_ids=ids, attention_mask=full_mask, position_ids=positions, cache=cache,
                use_cache=False, **kwargs)
    logp = torch.log_softmax(out.logits[:, :-1].float(), dim=-1)  # (N*O, L-1, V): predicts tokens 1..L-1
    rest = logp.gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1) * mask[:, 1:]  # (N*O, L-1)
    first_rows = first.repeat_interleave(n_opts, dim=0)  # (N*O, V)
    head = first_rows.gather(-1, ids[:, :1]).squeeze(-1)  # (N*O,)
    totals = (head + rest.sum(-1)).tolist()
    counts = mask.sum(-1).tolist()
    return [[(totals[k * n_opts + i], counts[k * n_opts + i]) for i in range(n_opts)] for k in range(n_names)]


def option_scores(model, tokenizer, questions: list, *, style: str = "cloze", system_prompt: str | None = None,
                  template: str | None = None, adapter_names: list[str] | None = None,
                  batch_rows: int = 16, progress: bool = False) -> list[list[tuple[float, int]]]:
    """For each (question, adapter) pair, a list of ``(sum log-prob, n tokens)`` per option.

    With ``adapter_names`` (peft per-row adapters), every question is scored once per name in the same batches;
    the result is ordered question-major: ``[q0/name0, q0/name1, ..., q1/name0, ...]``.
    """
    from tqdm.auto import tqdm

    names = adapter_names or [None]
    if style == "cloze":  # the prompt is shared by all options: compute it once per question and adapter
        results = []
        with torch.no_grad():
            for q in tqdm(questions, desc="scoring options", unit="question", disable=not progress):
                rows = _cloze_rows(tokenizer, q, system_prompt, template)
                prefix = rows[0][0][: len(rows[0][0]) - rows[0][1]]
                opts = [r[0][len(prefix):] for r in rows]
                results.extend(_cloze_shared_prefix(model, prefix, opts, names, tokenizer.pad_token_id))
        return results
    # lettered: one row per question and adapter; the score of option i is the log-prob of its letter
    jobs = []  # (question index, adapter name, rows)
    for qi, q in enumerate(questions):
        msgs = with_system(mc_messages(q.question, q.options, None, "lettered"), system_prompt)
        rows = [(tokenizer(prompt_text(tokenizer, msgs, template), add_special_tokens=False)["input_ids"], 0)]
        for name in names:
            jobs.append((qi, name, rows))
    letter_ids = [tokenizer(c, add_special_tokens=False)["input_ids"][0] for c in LETTERS]

    flat = [(j, r) for j, (_, _, rows) in enumerate(jobs) for r in rows]
    results: list[list[tuple[float, int]]] = [[] for _ in jobs]
    bar = tqdm(total=len(flat), desc="scoring options", unit="row", disable=not progress)
    with torch.no_grad():
        for start in range(0, len(flat), batch_rows):
            chunk = flat[start:start + batch_rows]
            kwargs: dict[str, Any] = {}
            if adapter_names:
                kwargs["adapter_names"] = [jobs[j][1] for j, _ in chunk]
            batch: Batch = left_pad([r[0] for _, r in chunk], [0] * len(chunk), tokenizer.pad_token_id)
            out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                        position_ids=batch.position_ids, logits_to_keep=1, use_cache=False, **kwargs)
            logp = torch.log_softmax(out.logits[:, -1].float(), dim=-1)  # (B, V)
            for row, (j, _) in enumerate(chunk):
                n_opts = len(questions[jobs[j][0]].options)
                results[j].extend((float(logp[row, letter_ids[i]]), 1) for i in range(n_opts))
            bar.update(len(chunk))
    bar.close()
    return results


def _per_question(q, opts: list[tuple[float, int]]) -> tuple[bool, bool, float]:
    """(right by mean log-prob per token, right by sum, softmax probability of the gold option over the sums)."""
    sums = [s for s, _ in opts]
    means = [s / max(n, 1) for s, n in opts]
    top = max(sums)
    gold = math.exp(sums[q.answer] - top) / sum(math.exp(s - top) for s in sums)
    return (max(range(len(means)), key=means.__getitem__) == q.answer,
            max(range(len(sums)), key=sums.__getitem__) == q.answer, gold)


def mc_metrics(questions: list, scores: list[list[tuple[float, int]]]) -> dict[str, float]:
    """Accuracy (mean log-prob per token), accuracy by sum, mean gold-option probability; ``accuracy`` is primary."""
    per = [_per_question(q, opts) for q, opts in zip(questions, scores)]
    n = max(len(questions), 1)
    return {"accuracy": sum(p[0] for p in per) / n, "accuracy_sum": sum(p[1] for p in per) / n,
            "gold_prob": sum(p[2] for p in per) / n, "n": float(len(questions))}


def paired_stats(questions: list, expert: list[list[tuple[float, int]]],
                 base: list[list[tuple[float, int]]]) -> dict[str, float]:
    """Expert vs base on the SAME questions: the mean gain in gold-option probability with its standard error (the
    paired differences' sample std / sqrt(n)), and how many questions only the expert / only the base gets right
    (primary accuracy; a sign test on these two counts is McNemar's test)."""
    diffs, only_expert, only_base = [], 0, 0
    for q, e, b in zip(questions, expert, base):
        pe, pb = _per_question(q, e), _per_question(q, b)
        diffs.append(pe[2] - pb[2])
        only_expert += pe[0] and not pb[0]
        only_base += pb[0] and not pe[0]
    n = len(diffs)
    mean = sum(diffs) / max(n, 1)
    var = sum((d - mean) ** 2 for d in diffs) / max(n - 1, 1)
    return {"gold_prob_gain": mean, "gold_prob_gain_se": math.sqrt(var / max(n, 1)),
            "only_expert_right": only_expert, "only_base_right": only_base}


def evaluate_mc(model, tokenizer, questions: list, *, style: str = "cloze", system_prompt: str | None = None,
                template: str | None = None, forward_kwargs: dict | None = None,
                progress: bool = False) -> dict[str, float]:
    """Score ``questions`` with one model (its active adapter); returns :func:`mc_metrics`."""
    names = (forward_kwargs or {}).get("adapter_names")
    scores = option_scores(model, tokenizer, questions, style=style, system_prompt=system_prompt, template=template,
                           adapter_names=names[:1] if names else None, progress=progress)
    return mc_metrics(questions, scores)


def sample_questions(dataset: str, split: str, limit: int | None, seed: int = 0) -> list:
    """A reproducible random subset (``limit`` questions) of a validation split (see ``data.split_questions``)."""
    from asymmetry.experts.data import split_questions

    questions = [q for q in split_questions(dataset, split, seed) if q.answer is not None]
    if limit and len(questions) > limit:
        questions = random.Random(f"eval-{dataset}-{split}-{seed}").sample(questions, limit)
    return questions


def compare_expert(registry, name: str, *, datasets: list[tuple[str, str]] | None = None, limit: int | None = 100,
                   style: str | None = None, progress: bool = True) -> list[dict[str, Any]]:
    """Expert vs its bare base on validation data, scored in the same batches (peft per-row adapters).

    Returns one row per dataset: ``{"dataset", "split", "n", "base_accuracy", "expert_accuracy", "base_gold_prob",
    "expert_gold_prob", ...}`` plus :func:`paired_stats` (gain in p(gold) with its paired standard error, and the
    questions only one side gets right).
    """
    from asymmetry.experts.data import DEFAULT_RECIPES

    from asymmetry.errors import AsymmetryError

    expert = registry.get(name)
    if not expert.adapter:
        raise AsymmetryError(f"expert {name!r} has no adapter: it IS its base, there is nothing to compare")
    recipe = DEFAULT_RECIPES.get(name, {})
    datasets = datasets or recipe.get("eval")
    if not datasets:
        raise AsymmetryError(f"no validation sets known for expert {name!r}: pass --dataset NAME[:SPLIT]")
    style = style or recipe.get("style", "cloze")
    model, tokenizer = registry.model_for(name)
    registry.batch_kwargs([name])  # enables the adapter layers for a mixed batch
    names = [name, "__base__"]  # row pairs: expert, then the bare base, in the same batches
    rows = []
    for dataset, split in datasets:
        questions = sample_questions(dataset, split, limit)
        scores = option_scores(model, tokenizer, questions, style=style, system_prompt=expert.system_prompt,
                               template=expert.prompt_template, adapter_names=names, progress=progress)
        m_exp = mc_metrics(questions, scores[0::2])
        m_base = mc_metrics(questions, scores[1::2])
        row = {"dataset": dataset, "split": split, "n": len(questions), "style": style}
        for key in ("accuracy", "accuracy_sum", "gold_prob"):
            row[f"base_{key}"] = round(m_base[key], 4)
            row[f"expert_{key}"] = round(m_exp[key], 4)
        row.update({k: round(v, 4) for k, v in paired_stats(questions, scores[0::2], scores[1::2]).items()})
        rows.append(row)
    return rows
