"""``expert compare``: an expert against its bare base on its domain's questions, in the same batches.

Each question is rendered in the expert's training format (its system prompt, the question as the user turn;
``lettered`` lists the options and scores each letter as the first reply token), and every option is scored as
the reply by :func:`asymmetry.eval.scoring.score_batch` — the project's one option scorer — with the expert's
adapter on one row and ``__base__`` on the next, so base and expert see identical prompts in the same forwards.

A bare base may do better in another format than the expert's, so for cloze experts the base is scored a second time
in ``eval mc``'s plain format (``[eval] prompt_template`` / ``option_template``: "Question: ...\nAnswer: option"),
and the expert is judged against the *better* of the two base formats on that set: the paired accuracy difference
with its standard error (per question: +1 only the expert right, -1 only the base, 0 otherwise).

Sets: ``heldout`` (default) are the parts of each domain's sets that no expert was trained or tuned on — the test
split where the set ships a labelled one (ARC, OpenBookQA, MMLU), otherwise the validation split or its evaluation
half (SciQ, CommonsenseQA, SocialIQA, HellaSwag: trained on train or the other half only); ``validation`` are the
validation sets the recipes report during training.
"""

from __future__ import annotations

import random
from typing import Any

from tqdm.auto import tqdm

from asymmetry.config import EvalConfig
from asymmetry.errors import AsymmetryError
from asymmetry.eval.metrics import option_metrics, paired_accuracy, paired_option_stats
from asymmetry.eval.scoring import score_batch
from asymmetry.experts import BASE_ROW, ExpertRegistry
from asymmetry.experts.data import DEFAULT_RECIPES, LETTERS, mc_messages, split_questions
from asymmetry.experts.prompts import render_prompt


def sample_questions(dataset: str, split: str, limit: int | None, seed: int = 0) -> list:
    """A reproducible random subset (``limit`` questions) of a validation split (see ``data.split_questions``)."""
    questions = [q for q in split_questions(dataset, split, seed) if q.answer is not None]
    if limit and len(questions) > limit:
        questions = random.Random(f"eval-{dataset}-{split}-{seed}").sample(questions, limit)
    return questions


COMPARE_SETS = ("heldout", "validation")
# per default expert: its domain's parts that no expert trained or tuned on (see the module docstring)
HELDOUT_SETS: dict[str, list[tuple[str, str]]] = {
    "science": [("arc_easy", "test"), ("arc_challenge", "test"), ("openbookqa", "test"), ("sciq", "validation:eval")],
    "commonsense": [("commonsense_qa", "validation"), ("social_iqa", "validation"), ("hellaswag", "validation")],
    "scholar": [("mmlu", "test")],
}


def question_prompt(tokenizer, question, *, style: str = "cloze", system_prompt: str | None = None,
                    template: str | None = None, plain: EvalConfig | None = None) -> tuple[str, list[str]]:
    """The prompt before the reply and the option strings scored as replies (option texts, or letters). ``plain``:
    ``eval mc``'s plain templates of that config instead of a chat format (what a bare base is scored with)."""
    if plain is not None:
        return (plain.prompt_template.format(question=question.question),
                [plain.option_template.format(option=o) for o in question.options])
    messages = mc_messages(question.question, question.options, None, style, system=system_prompt)
    prefix = render_prompt(tokenizer, messages, template)
    options = list(question.options) if style == "cloze" else list(LETTERS[: len(question.options)])
    return prefix, options


def option_scores(model, tokenizer, questions: list, *, style: str = "cloze", system_prompt: str | None = None,
                  template: str | None = None, adapter_names: list[str] | None = None, lock: Any = None,
                  batch_questions: int = 8, progress: bool = False, plain: EvalConfig | None = None
                  ) -> list[list[tuple[float, int]]]:
    """For each (question, adapter) pair, ``(sum log-prob, n tokens)`` per option, ordered question-major:
    ``[q0/name0, q0/name1, ..., q1/name0, ...]``. Without ``adapter_names`` the model runs as it is."""
    names = adapter_names or [None]
    results: list[list[tuple[float, int]]] = []
    bar = tqdm(total=len(questions), desc="scoring options", unit="question", disable=not progress)
    for start in range(0, len(questions), batch_questions):
        chunk = questions[start:start + batch_questions]
        prefixes, options, rows = [], [], []
        for q in chunk:
            prefix, opts = question_prompt(tokenizer, q, style=style, system_prompt=system_prompt, template=template,
                                           plain=plain)
            for name in names:
                prefixes.append(prefix)
                options.append(opts)
                rows.append(name)
        scored = score_batch(model, tokenizer, prefixes, options, lock=lock,
                             adapter_names=rows if adapter_names else None)
        results.extend([list(zip(s.loglik, s.n_tokens)) for s in scored])
        bar.update(len(chunk))
    bar.close()
    return results


def compare_expert(registry: ExpertRegistry, name: str, *, datasets: list[tuple[str, str]] | None = None,
                   limit: int | None = 100, style: str | None = None, progress: bool = True, sets: str = "heldout",
                   eval_config: EvalConfig | None = None) -> list[dict[str, Any]]:
    """Expert vs its bare base on its domain's sets (``sets``: heldout or validation, unless ``datasets`` names
    them), scored in the same batches (peft per-row adapters).

    Returns one row per dataset: ``{"dataset", "split", "n", "base_accuracy", "expert_accuracy", "base_gold_prob",
    "expert_gold_prob", ...}`` plus :func:`paired_option_stats` (gain in p(gold) with its paired standard error,
    and the questions only one side gets right). Cloze experts also get ``base_plain_accuracy`` (the base in the plain
    format), ``best_base`` (``chat`` or ``plain``, the better base accuracy), ``gain_vs_best`` with
    ``gain_vs_best_se`` (paired accuracy difference) and ``beats_best_base`` (the gain is at least two standard
    errors).
    """
    if sets not in COMPARE_SETS:
        raise AsymmetryError(f"unknown sets {sets!r}: use one of {', '.join(COMPARE_SETS)}")
    expert = registry.get(name)
    if not expert.adapter:
        raise AsymmetryError(f"expert {name!r} has no adapter: it IS its base, there is nothing to compare (the "
                             f"LoRA experts are in the small line-up: set [experts] lineup = \"small\" in --config)")
    recipe = DEFAULT_RECIPES.get(name, {})
    datasets = datasets or (HELDOUT_SETS.get(name) if sets == "heldout" else recipe.get("eval"))
    if not datasets:
        raise AsymmetryError(f"no validation sets known for expert {name!r}: pass --dataset NAME[:SPLIT]")
    style = style or recipe.get("style", "cloze")
    handle = registry.model(name)
    rows = []
    for dataset, split in datasets:
        questions = sample_questions(dataset, split, limit)
        scores = option_scores(handle.model, handle.tokenizer, questions, style=style,
                               system_prompt=expert.system_prompt, template=expert.prompt_template,
                               adapter_names=[handle.row_name, BASE_ROW], lock=handle.lock, progress=progress)
        answers = [q.answer for q in questions]
        m_exp, m_base = option_metrics(answers, scores[0::2]), option_metrics(answers, scores[1::2])
        row = {"dataset": dataset, "split": split, "n": len(questions), "style": style}
        for key in ("accuracy", "accuracy_sum", "gold_prob"):
            row[f"base_{key}"] = round(m_base[key], 4)
            row[f"expert_{key}"] = round(m_exp[key], 4)
        row.update({k: round(v, 4) for k, v in paired_option_stats(answers, scores[0::2], scores[1::2]).items()})
        if style == "cloze":
            plain = option_scores(handle.model, handle.tokenizer, questions, adapter_names=[BASE_ROW],
                                  lock=handle.lock, plain=eval_config or EvalConfig(), progress=progress)
            row["base_plain_accuracy"] = round(option_metrics(answers, plain)["accuracy"], 4)
            best_base = "plain" if row["base_plain_accuracy"] > row["base_accuracy"] else "chat"
            gain, se = paired_accuracy(answers, scores[0::2], plain if best_base == "plain" else scores[1::2])
            row.update(best_base=best_base, gain_vs_best=round(gain, 4), gain_vs_best_se=round(se, 4),
                       beats_best_base=gain >= 2 * se and gain > 0)
        rows.append(row)
    return rows
