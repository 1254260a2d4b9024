"""LoRA training of an expert with peft on chat data (only the assistant's answer is trained).

A plain PyTorch loop (small data, one CPU): AdamW with linear warm-up/decay, a tqdm bar showing the loss, a
checkpoint every ``checkpoint_every`` steps (adapter weights, optimizer, scheduler, step) that ``resume=True`` picks
up after an interruption, an eval loss on a held-out slice, and an adapter folder saved atomically with a card
(``asymmetry_card.json`` and ``README.md``: base, data, steps, final losses).
"""

from __future__ import annotations

import json
import math
import pickle
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from asymmetry.atomic import atomic_dir, atomic_path
from asymmetry.errors import AsymmetryError, ConfigError
from asymmetry.experts.annotate import grounded_examples, retrieved_examples
from asymmetry.experts.base import LoadedBase, Placement, load_model
from asymmetry.experts.config import SMALL_EXPERTS, adapters_package_dir
from asymmetry.experts.controls import CARD_FILE, CONTROL_ROWS, split_control_rows, trainable_rows
from asymmetry.experts.data import DEFAULT_RECIPES, ChatExample, default_examples
from asymmetry.experts.prompts import with_system
from asymmetry.experts.tokens import answer_logprobs, answer_loss, encode_example, left_pad
from asymmetry.integrity import finite_number, positive_int, verify_checksum, write_checksum, write_folder_checksums

CHECKPOINT_DIR = ".checkpoint"
DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")

# per example: token ids, how many trailing ones are the answer, and for a multiple-choice example trained with
# mc_weight (every option as the reply: ids, answer tokens, option-text tokens; the right option's index), else None
MCEncoded = tuple[list[tuple[list[int], int, int]], int]
Encoded = list[tuple[list[int], int, MCEncoded | None]]


@dataclass
class AdapterTrainSettings:
    """Settings of one LoRA training run (``asymmetry expert train``); the router's are ``RouterTrainSettings``."""

    rank: int = 8
    alpha: int = 16
    dropout: float = 0.05
    lr: float = 3e-4
    epochs: int = 1
    max_steps: int | None = None
    batch_size: int = 8
    max_length: int = 192
    eval_size: int = 64
    checkpoint_every: int = 50
    warmup_steps: int = 10
    seed: int = 0
    target_modules: tuple[str, ...] = DEFAULT_TARGETS
    top_layers: int | None = None  # LoRA only on the last N decoder layers (backward stops there: cheaper)
    # weight of a multiple-choice loss beside the answer's cross-entropy: every option of an example with ``choices``
    # is scored as the reply (mean log-prob per option token, as `eval mc` and `expert compare` rank options) and a
    # cross-entropy over the options pulls the right one up and the others down (0: the answer's loss alone)
    mc_weight: float = 0.0

    def __post_init__(self):
        for name in ("rank", "alpha", "epochs", "batch_size", "max_length", "checkpoint_every"):
            positive_int(name, getattr(self, name), "must be a positive integer")
        if self.max_steps is not None:
            positive_int("max_steps", self.max_steps, "must be a positive integer (or omitted)")
        finite_number("lr", self.lr, "use a learning rate in (0, 1), e.g. 3e-4", above=0.0, maximum=1.0)
        if self.lr == 1.0:
            raise ConfigError("lr", self.lr, "use a learning rate in (0, 1), e.g. 3e-4")
        finite_number("dropout", self.dropout, "use a dropout in [0, 1)", minimum=0.0, maximum=1.0)
        if self.dropout == 1.0:
            raise ConfigError("dropout", self.dropout, "use a dropout in [0, 1)")
        positive_int("eval_size", self.eval_size, "must be >= 0", minimum=0)
        finite_number("mc_weight", self.mc_weight, "use a weight >= 0, e.g. 1.0 (0 turns the option loss off)",
                      minimum=0.0)


@dataclass
class TrainResult:
    adapter_dir: Path
    steps: int
    train_loss: float
    eval_loss: float | None
    eval_loss_before: float | None
    seconds: float
    resumed_from: int = 0
    card: dict = field(default_factory=dict)
    model: Any = None  # the trained PeftModel, for inspection (its adapter is what was saved)


@dataclass
class _Run:
    """The state of one training run: what a checkpoint saves and what ``resume=True`` restores."""

    name: str
    base_name: str
    model: Any  # the PeftModel
    params: list
    optimizer: Any
    scheduler: Any
    total: int  # optimizer steps of the whole run
    steps_per_epoch: int
    n_examples: int
    step: int = 0
    losses: list[float] = field(default_factory=list)
    eval_before: float | None = None


def train_adapter(
    name: str,
    examples: list[ChatExample],
    out_dir: str | Path,
    *,
    base: str = "smollm2",
    system_prompt: str | None = None,
    settings: AdapterTrainSettings | None = None,
    data_description: str = "",
    resume: bool = False,
    progress: bool = True,
    stop_after: int | None = None,
    control_tokens: dict[str, str] | None = None,
    add_tokens: Callable[[Any, Any, list[str]], int] | None = None,
) -> TrainResult | None:
    """Train a LoRA adapter named ``name`` on ``examples`` and save it (with its card) to ``out_dir``.

    ``control_tokens`` (control name -> token, the ``[controls]`` vocabulary) trains an expert that emits control
    tokens: ``add_tokens(model, tokenizer, tokens)`` (``asymmetry.sampling.add_control_tokens``) gives the fresh base
    the tokens first, and their embedding rows (and output rows, when the head is not tied to them) train beside the
    LoRA weights (peft's ``trainable_token_indices``); every other row stays as it was. The rows are saved apart
    (:mod:`asymmetry.experts.controls`) and the card records the vocabulary, so loading the expert gives its base the
    same tokens and rows.

    ``stop_after`` trains at most that many steps in this call, saves a checkpoint and returns None: training in
    slices on a shared machine; continue with ``resume=True``.
    """
    s = settings or AdapterTrainSettings()
    out_dir = Path(out_dir)
    ckpt_file = _checkpoint_dir(out_dir) / "state.pt"
    _check_inputs(name, examples, ckpt_file, resume)

    started = time.perf_counter()
    torch.manual_seed(s.seed)  # before the LoRA layers are built: their initial weights come from it
    # a fresh, unshared copy (peft injects LoRA layers into the model it wraps), with float linears: torch's int8/int4
    # weight-only kernels have no backward, and LoRA's gradients flow back through every base layer's input
    loaded = load_model(base, Placement(quantize="none"))
    token_ids = _add_control_tokens(loaded, control_tokens, add_tokens)
    pad_id = loaded.tokenizer.pad_token_id
    train_enc, eval_enc = _encode_split(examples, loaded.tokenizer, system_prompt, s)
    run = _start_run(name, loaded, s, n_train=len(train_enc), n_examples=len(examples), token_ids=token_ids)
    if resume and ckpt_file.is_file():
        _restore_checkpoint(run, ckpt_file)
    resumed_from = run.step
    if run.step == 0:
        run.eval_before = _eval_loss(run.model, eval_enc, pad_id, s.batch_size)

    if not _train_steps(run, train_enc, pad_id, s, ckpt_file, progress=progress, stop_after=stop_after):
        return None  # stopped after ``stop_after`` steps, checkpoint saved

    eval_after = _eval_loss(run.model, eval_enc, pad_id, s.batch_size)
    train_loss = _recent_loss(run.losses)
    card = _make_card(run, loaded, s, base=base, data_description=data_description, system_prompt=system_prompt,
                      n_train=len(train_enc), n_eval=len(eval_enc), train_loss=train_loss, eval_after=eval_after)
    if token_ids:
        card["controls"] = {"tokens": control_tokens, "ids": token_ids}
    _save_adapter(run, out_dir, card)
    shutil.rmtree(ckpt_file.parent, ignore_errors=True)
    return TrainResult(
        adapter_dir=out_dir, steps=run.step, train_loss=train_loss, eval_loss=eval_after,
        eval_loss_before=run.eval_before, seconds=time.perf_counter() - started, resumed_from=resumed_from, card=card,
        model=run.model,
    )


# --- the steps of train_adapter, in order -------------------------------------------------------------------------


def _checkpoint_dir(out_dir: Path) -> Path:
    """Where an interrupted run of ``out_dir`` keeps its state: a sibling folder ``<name>.checkpoint``."""
    return out_dir.parent / f"{out_dir.name}{CHECKPOINT_DIR}"


def _check_inputs(name: str, examples: list[ChatExample], ckpt_file: Path, resume: bool) -> None:
    if ckpt_file.is_file() and not resume:
        raise AsymmetryError(
            f"an interrupted training run left a checkpoint in {ckpt_file.parent}: pass --resume to continue it, "
            f"or delete that folder to start over"
        )
    if len(examples) < 2:
        raise AsymmetryError(f"expert {name!r}: need at least 2 training examples, got {len(examples)}")


def _add_control_tokens(loaded: LoadedBase, control_tokens: dict[str, str] | None, add_tokens) -> list[int] | None:
    """Give the fresh base the control tokens; their ids (None without controls)."""
    if control_tokens is None:
        return None
    if not control_tokens:
        raise AsymmetryError("no control tokens to train ([controls] enabled = false?): enable the vocabulary")
    if add_tokens is None:
        raise AsymmetryError("control_tokens need add_tokens (asymmetry.sampling.add_control_tokens) to add them")
    tokens = list(control_tokens.values())
    add_tokens(loaded.model, loaded.tokenizer, tokens)
    return [int(loaded.tokenizer.convert_tokens_to_ids(t)) for t in tokens]


def _encode_split(examples: list[ChatExample], tokenizer, system_prompt: str | None,
                  s: AdapterTrainSettings) -> tuple[Encoded, Encoded]:
    """Shuffle with the run's seed, hold out an eval slice (``eval_size``, at most a fifth), tokenise both parts."""
    order = list(range(len(examples)))
    random.Random(s.seed).shuffle(order)
    n_eval = min(s.eval_size, len(examples) // 5)
    eval_idx, train_idx = order[:n_eval], order[n_eval:]

    def enc(i: int, train: bool) -> tuple[list[int], int, MCEncoded | None]:
        ex = examples[i]
        messages = with_system(ex.messages, system_prompt)
        ids, n = encode_example(tokenizer, messages, s.max_length)
        mc = _encode_options(tokenizer, messages, ex, s.max_length) if train and s.mc_weight and ex.choices else None
        return ids, n, mc

    return [enc(i, True) for i in train_idx], [enc(i, False) for i in eval_idx]


def _encode_options(tokenizer, messages: list[dict[str, str]], ex: ChatExample, max_length: int) -> MCEncoded:
    """Every option of a multiple-choice example as the reply: (ids, answer tokens, option-text tokens) each, the
    option text followed by the template's end-of-turn marker (not ranked: the same for every option)."""
    if ex.gold is None or not 0 <= ex.gold < len(ex.choices):
        raise AsymmetryError(f"a multiple-choice training example from {ex.source or 'the data'} has gold={ex.gold!r} "
                             f"for {len(ex.choices)} choices: give the index of the right option")
    rows = []
    for option in ex.choices:
        ids, n = encode_example(tokenizer, [*messages[:-1], {"role": "assistant", "content": option}], max_length)
        text = len(tokenizer(option, add_special_tokens=False)["input_ids"])
        rows.append((ids, n, max(1, min(text, n))))
    return rows, ex.gold


def _build_peft_model(loaded: LoadedBase, name: str, s: AdapterTrainSettings, token_ids: list[int] | None = None):
    """The base wrapped with a fresh LoRA adapter ``name`` (on the last ``top_layers`` layers if set), in train mode;
    with ``token_ids``, those embedding rows (and output rows of an untied head) train too."""
    from peft import LoraConfig, get_peft_model

    n_layers = loaded.model.config.num_hidden_layers
    layers = list(range(max(0, n_layers - s.top_layers), n_layers)) if s.top_layers else None
    lora = LoraConfig(
        r=s.rank, lora_alpha=s.alpha, lora_dropout=s.dropout, target_modules=list(s.target_modules),
        layers_to_transform=layers, task_type="CAUSAL_LM", trainable_token_indices=trainable_rows(loaded, token_ids),
    )
    try:
        model = get_peft_model(loaded.model, lora, adapter_name=name)
    except ValueError as exc:
        raise AsymmetryError(f"cannot add LoRA to {loaded.name} ({exc}): pass --target-modules that exist in it")
    model.train()
    return model


def _start_run(name: str, loaded: LoadedBase, s: AdapterTrainSettings, *, n_train: int, n_examples: int,
               token_ids: list[int] | None = None) -> _Run:
    """The peft model, AdamW over its trainable parameters and a linear warm-up/decay schedule, at step 0."""
    from transformers import get_linear_schedule_with_warmup

    steps_per_epoch = max(1, math.ceil(n_train / s.batch_size))
    total = s.max_steps or steps_per_epoch * s.epochs  # like transformers: max_steps overrides epochs
    model = _build_peft_model(loaded, name, s, token_ids)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=s.lr, weight_decay=0.0)
    scheduler = get_linear_schedule_with_warmup(optimizer, min(s.warmup_steps, total // 10 + 1), total)
    return _Run(name, loaded.name, model, params, optimizer, scheduler, total, steps_per_epoch, n_examples)


def _save_checkpoint(run: _Run, ckpt_file: Path) -> None:
    from peft import get_peft_model_state_dict

    state = {
        "adapter": get_peft_model_state_dict(run.model, adapter_name=run.name), "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(), "step": run.step, "losses": run.losses,
        "eval_before": run.eval_before, "torch_rng": torch.get_rng_state(), "base": run.base_name, "total": run.total,
        "n_examples": run.n_examples,
    }
    with atomic_path(ckpt_file) as tmp:
        torch.save(state, tmp)
    write_checksum(ckpt_file)  # state.pt.sha256: a damaged checkpoint is refused by --resume, not trained on


def _restore_checkpoint(run: _Run, ckpt_file: Path) -> None:
    """Continue ``run`` from the checkpoint of an interrupted run with the same base, steps and data size."""
    from peft import set_peft_model_state_dict

    fix = f"delete {ckpt_file.parent} and train again without --resume"
    verify_checksum(ckpt_file, fix, what="training checkpoint")
    try:
        state = torch.load(ckpt_file, weights_only=False)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError) as exc:
        raise AsymmetryError(f"training checkpoint {ckpt_file} is damaged ({str(exc)[:120]}): {fix}") from None
    if state["base"] != run.base_name or state["total"] != run.total or state["n_examples"] != run.n_examples:
        raise AsymmetryError(
            f"the checkpoint in {ckpt_file.parent} is from a different run (base {state['base']}, {state['total']} "
            f"steps, {state['n_examples']} examples): rerun with the same data and settings, or delete that folder"
        )
    set_peft_model_state_dict(run.model, state["adapter"], adapter_name=run.name)
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    run.step, run.losses, run.eval_before = state["step"], state["losses"], state["eval_before"]
    torch.set_rng_state(state["torch_rng"])


def _recent_loss(losses: list[float]) -> float:
    """Mean training loss of the last 20 steps (what the progress bar shows and the card records)."""
    return sum(losses[-20:]) / max(len(losses[-20:]), 1)


def _train_steps(run: _Run, train_enc: Encoded, pad_id: int, s: AdapterTrainSettings, ckpt_file: Path, *,
                 progress: bool, stop_after: int | None) -> bool:
    """Optimizer steps until ``run.total`` (True), or until ``stop_after`` steps of this call (checkpoint saved,
    False). Epoch ``e`` visits the examples in a fixed order drawn from ``seed * 1000 + e``, so a resumed run sees
    the same batches as an uninterrupted one; a checkpoint is saved every ``checkpoint_every`` steps."""
    bar = tqdm(total=run.total, initial=run.step, desc=f"train {run.name}", unit="step", disable=not progress)
    budget = run.step + stop_after if stop_after else None
    while run.step < run.total:
        if budget is not None and run.step >= budget:
            _save_checkpoint(run, ckpt_file)
            bar.close()
            return False
        epoch, pos = divmod(run.step, run.steps_per_epoch)
        perm = list(range(len(train_enc)))
        random.Random(s.seed * 1000 + epoch).shuffle(perm)
        chunk = [train_enc[j] for j in perm[pos * s.batch_size:(pos + 1) * s.batch_size]]
        if s.mc_weight and all(mc is not None for _, _, mc in chunk):
            loss = _answer_and_option_loss(run.model, chunk, pad_id, s.mc_weight)  # scalar
        else:
            batch = left_pad([q for q, _, _ in chunk], [n for _, n, _ in chunk], pad_id)  # (B, T) ids, (B, K) labels
            loss = answer_loss(run.model, batch)  # scalar
        loss.backward()
        torch.nn.utils.clip_grad_norm_(run.params, 1.0)
        run.optimizer.step()
        run.scheduler.step()
        run.optimizer.zero_grad(set_to_none=True)
        run.step += 1
        run.losses.append(float(loss.detach()))
        bar.set_postfix(loss=f"{_recent_loss(run.losses):.3f}")
        bar.update(1)
        if run.step % s.checkpoint_every == 0 and run.step < run.total:
            _save_checkpoint(run, ckpt_file)
    bar.close()
    return True


def _answer_and_option_loss(model, chunk: Encoded, pad_id: int, mc_weight: float) -> torch.Tensor:
    """The right answer's cross-entropy per token plus ``mc_weight`` times a cross-entropy over each example's options
    ranked by mean log-prob per option-text token, from one forward over every option row of the batch (the right
    option's row, with its end-of-turn marker, is the answer's row)."""
    seqs, lengths, texts = [], [], []  # per option row, example by example: ids, answer tokens, option-text tokens
    for _, _, (rows, _) in chunk:
        for ids, n, t in rows:
            seqs.append(ids)
            lengths.append(n)
            texts.append(t)
    batch = left_pad(seqs, lengths, pad_id)  # (R, T) ids, (R, K) labels
    logp = answer_logprobs(model, batch)  # (R, K), zero where unlabelled
    keep = batch.keep
    pos = torch.arange(keep)  # (K,)
    start = torch.tensor([keep - n for n in lengths])  # (R,) first answer position of each row
    text_mask = (pos >= start[:, None]) & (pos < (start + torch.tensor(texts))[:, None])  # (R, K)
    mean = (logp * text_mask).sum(-1) / text_mask.sum(-1)  # (R,) mean log-prob per option-text token
    n_opts = max(len(rows) for _, _, (rows, _) in chunk)
    ranked = torch.full((len(chunk), n_opts), float("-inf"))  # (B, O); an example with fewer options pads with -inf
    gold_rows, r = [], 0
    for b, (_, _, (rows, gold)) in enumerate(chunk):
        ranked[b, : len(rows)] = mean[r: r + len(rows)]
        gold_rows.append(r + gold)
        r += len(rows)
    golds = torch.tensor([gold for _, _, (_, gold) in chunk])  # (B,)
    option_loss = torch.nn.functional.cross_entropy(ranked, golds)
    gold_logp = logp[gold_rows]  # (B, K)
    answer = -gold_logp.sum() / (batch.labels[gold_rows] != -100).sum().clamp(min=1)
    return answer + mc_weight * option_loss


def _eval_loss(model, encoded: Encoded, pad_id: int, batch_size: int) -> float | None:
    """Mean cross-entropy per answer token over ``encoded`` (None when there is nothing held out)."""
    if not encoded:
        return None
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(encoded), batch_size):
            chunk = encoded[i:i + batch_size]
            batch = left_pad([q for q, _, _ in chunk], [n for _, n, _ in chunk], pad_id)  # (B, T) ids, (B, K) labels
            tokens = int((batch.labels != -100).sum())
            total += float(answer_loss(model, batch)) * tokens
            count += tokens
    model.train()
    return total / max(count, 1)


def _make_card(run: _Run, loaded: LoadedBase, s: AdapterTrainSettings, *, base: str, data_description: str,
               system_prompt: str | None, n_train: int, n_eval: int, train_loss: float,
               eval_after: float | None) -> dict:
    return {
        "name": run.name,
        "base": base,
        "base_model": loaded.name,
        "base_folder": loaded.path.name,
        "data": data_description,
        "examples": n_train,
        "eval_examples": n_eval,
        "steps": run.step,
        "settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(s).items()},
        "final_train_loss": round(train_loss, 4),
        "eval_loss_before": None if run.eval_before is None else round(run.eval_before, 4),
        "final_eval_loss": None if eval_after is None else round(eval_after, 4),
        "system_prompt": system_prompt,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _save_adapter(run: _Run, out_dir: Path, card: dict) -> None:
    """The adapter weights and config, ``asymmetry_card.json`` and ``README.md``, swapped in as one folder."""
    run.model.peft_config[run.name].base_model_name_or_path = run.base_name  # portable: not a cache path
    with atomic_dir(out_dir) as tmp:
        run.model.save_pretrained(tmp, selected_adapters=[run.name])
        nested = tmp / run.name  # peft nests a non-"default" adapter in a sub-folder; keep the folder flat
        if nested.is_dir():
            for f in nested.iterdir():
                f.rename(tmp / f.name)
            nested.rmdir()
        if card.get("controls"):
            split_control_rows(tmp, card["controls"]["ids"])
        (tmp / CARD_FILE).write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
        (tmp / "README.md").write_text(_card_markdown(card), encoding="utf-8")
        write_folder_checksums(tmp)  # SHA256SUMS: verified before the adapter is attached (registry.check_adapter)


def _card_markdown(card: dict) -> str:
    s = card["settings"]
    return (
        f"# LoRA adapter `{card['name']}`\n\n"
        f"- base: {card['base_model']} (`{card['base']}`)\n"
        f"- data: {card['data'] or 'unspecified'} ({card['examples']} training examples, "
        f"{card['eval_examples']} held out for eval loss)\n"
        f"- LoRA: rank {s['rank']}, alpha {s['alpha']}, dropout {s['dropout']}, modules {', '.join(s['target_modules'])}"
        + (f" of the last {s['top_layers']} layers" if s.get("top_layers") else "") + "\n"
        f"- training: {card['steps']} steps, batch {s['batch_size']}, lr {s['lr']}, max length {s['max_length']}"
        + (f"; every option ranked too (multiple-choice loss, weight {s['mc_weight']})" if s.get("mc_weight") else "")
        + "\n"
        f"- final train loss {card['final_train_loss']}; eval loss {card['eval_loss_before']} before -> "
        f"{card['final_eval_loss']} after\n"
        + (f"- control tokens (embedding rows trained, in `{CONTROL_ROWS}`): "
           f"{', '.join(card['controls']['tokens'].values())}\n" if card.get("controls") else "")
        + f"- created {card['created']} by `asymmetry expert train`\n"
    )


def read_card(adapter_dir: str | Path) -> dict | None:
    path = Path(adapter_dir) / CARD_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise AsymmetryError(f"adapter card {path} is not valid JSON ({exc}): retrain the adapter or fix the file")


def train_default(name: str, out_root: str | Path | None = None, *, resume: bool = False, progress: bool = True,
                  control_tokens: dict[str, str] | None = None, add_tokens=None,
                  instruction: str | None = None) -> TrainResult:
    """Train one default expert (science, commonsense, scholar; grounded) from the shipped data sets, reproducibly.

    A recipe with ``controls`` (``grounded``) trains on annotated grounded answers (:mod:`asymmetry.experts.annotate`)
    and needs the control vocabulary's ``control_tokens``, ``add_tokens`` and the engine's cite ``instruction``."""
    if name not in DEFAULT_RECIPES:
        raise AsymmetryError(f"no default recipe for {name!r}: choose from {', '.join(DEFAULT_RECIPES)}")
    recipe = DEFAULT_RECIPES[name]
    settings = AdapterTrainSettings(**recipe["settings"])
    desc = ", ".join(f"{d} {sp}" + (f" (first {n} shuffled)" if n else "") for d, sp, n in recipe["train"])
    if recipe.get("controls"):
        if not control_tokens or instruction is None:
            raise AsymmetryError(f"recipe {name!r} trains control tokens: pass control_tokens, add_tokens and "
                                 "instruction (asymmetry expert train-defaults does)")
        system_prompt = recipe["system_prompt"]
        examples = grounded_examples(control_tokens, instruction=instruction, system=system_prompt, **recipe["data"])
        if "retrieved" in recipe:  # distant supervision on passages the default pipeline retrieved
            examples = retrieved_examples(control_tokens, instruction=instruction, system=system_prompt,
                                          **recipe["retrieved"]) + examples
            random.Random(recipe.get("mix_seed", f"{name}-mix")).shuffle(examples)
        desc += "; answers annotated recall/explain (experts/annotate.py)"
    else:
        system_prompt = next(e for e in SMALL_EXPERTS if e.name == name).system_prompt  # the small line-up's LoRAs
        examples, control_tokens = default_examples(name), None
    return train_adapter(
        name, examples, Path(out_root or adapters_package_dir()) / name, base=recipe["base"],
        system_prompt=system_prompt, settings=settings, data_description=f"{desc}; style {recipe['style']}",
        resume=resume, progress=progress, control_tokens=control_tokens, add_tokens=add_tokens,
    )
