"""LoRA training of an expert with peft on chat data (only the assistant's answer is trained).

A plain PyTorch loop (small data, one CPU): AdamW with linear warm-up/decay, a tqdm bar showing the loss, a
checkpoint every ``checkpoint_every`` steps (adapter weights, optimizer, scheduler, step) that ``resume=True`` picks
up after an interruption, an eval loss on a held-out slice, and an adapter folder saved atomically with a card
(``asymmetry_card.json`` and ``README.md``: base, data, steps, final losses).
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from asymmetry.experts.data import ChatExample
from asymmetry.experts.tokens import answer_loss, encode_example, left_pad, with_system

from asymmetry.errors import AsymmetryError

CARD_FILE = "asymmetry_card.json"
CHECKPOINT_DIR = ".checkpoint"
DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")


@dataclass
class TrainSettings:
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

    def __post_init__(self):
        from asymmetry.errors import ConfigError

        for name in ("rank", "alpha", "epochs", "batch_size", "max_length", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ConfigError(name, getattr(self, name), "must be a positive integer")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError("max_steps", self.max_steps, "must be a positive integer (or omitted)")
        if not 0 < self.lr < 1:
            raise ConfigError("lr", self.lr, "use a learning rate in (0, 1), e.g. 3e-4")
        if not 0 <= self.dropout < 1:
            raise ConfigError("dropout", self.dropout, "use a dropout in [0, 1)")
        if self.eval_size < 0:
            raise ConfigError("eval_size", self.eval_size, "must be >= 0")


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


def _atomic_torch_save(obj, path: Path) -> None:
    import torch

    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")
    os.close(fd)
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _eval_loss(model, encoded, pad_id: int, batch_size: int) -> float | None:
    import torch

    if not encoded:
        return None
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(encoded), batch_size):
            chunk = encoded[i:i + batch_size]
            batch = left_pad([s for s, _ in chunk], [n for _, n in chunk], pad_id)
            tokens = int((batch.labels != -100).sum())
            total += float(answer_loss(model, batch)) * tokens
            count += tokens
    model.train()
    return total / max(count, 1)


def train_adapter(
    name: str,
    examples: list[ChatExample],
    out_dir: str | Path,
    *,
    base: str = "smollm2",
    system_prompt: str | None = None,
    settings: TrainSettings | None = None,
    data_description: str = "",
    resume: bool = False,
    progress: bool = True,
    stop_after: int | None = None,
) -> TrainResult | None:
    """Train a LoRA adapter named ``name`` on ``examples`` and save it (with its card) to ``out_dir``.

    ``stop_after`` trains at most that many steps in this call, saves a checkpoint and returns None: training in
    slices on a shared machine; continue with ``resume=True``.
    """
    import torch
    from asymmetry.experts.base import load_private_copy
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
    from tqdm.auto import tqdm
    from transformers import get_linear_schedule_with_warmup

    s = settings or TrainSettings()
    out_dir = Path(out_dir)
    ckpt_dir = out_dir.parent / f"{out_dir.name}{CHECKPOINT_DIR}"
    ckpt_file = ckpt_dir / "state.pt"
    if ckpt_file.is_file() and not resume:
        raise AsymmetryError(
            f"an interrupted training run left a checkpoint in {ckpt_dir}: pass --resume to continue it, "
            f"or delete that folder to start over"
        )
    if len(examples) < 2:
        raise AsymmetryError(f"expert {name!r}: need at least 2 training examples, got {len(examples)}")

    started = time.perf_counter()
    torch.manual_seed(s.seed)
    loaded = load_private_copy(base)
    tok = loaded.tokenizer
    pad_id = tok.pad_token_id

    rng = random.Random(s.seed)
    order = list(range(len(examples)))
    rng.shuffle(order)
    n_eval = min(s.eval_size, len(examples) // 5)
    eval_idx, train_idx = order[:n_eval], order[n_eval:]

    def enc(i: int) -> tuple[list[int], int]:
        return encode_example(tok, with_system(examples[i].messages, system_prompt), s.max_length)

    train_enc = [enc(i) for i in train_idx]
    eval_enc = [enc(i) for i in eval_idx]
    steps_per_epoch = max(1, math.ceil(len(train_enc) / s.batch_size))
    total = s.max_steps or steps_per_epoch * s.epochs  # like transformers: max_steps overrides epochs
    n_layers = loaded.model.config.num_hidden_layers
    layers = list(range(max(0, n_layers - s.top_layers), n_layers)) if s.top_layers else None
    lora = LoraConfig(
        r=s.rank, lora_alpha=s.alpha, lora_dropout=s.dropout, target_modules=list(s.target_modules),
        layers_to_transform=layers, task_type="CAUSAL_LM",
    )
    try:
        model = get_peft_model(loaded.model, lora, adapter_name=name)
    except ValueError as exc:
        raise AsymmetryError(f"cannot add LoRA to {loaded.name} ({exc}): pass --target-modules that exist in it")
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=s.lr, weight_decay=0.0)
    scheduler = get_linear_schedule_with_warmup(optimizer, min(s.warmup_steps, total // 10 + 1), total)

    step, losses, eval_before = 0, [], None
    if resume and ckpt_file.is_file():
        state = torch.load(ckpt_file, weights_only=False)
        if state["base"] != loaded.name or state["total"] != total or state["n_examples"] != len(examples):
            raise AsymmetryError(
                f"the checkpoint in {ckpt_dir} is from a different run (base {state['base']}, {state['total']} steps, "
                f"{state['n_examples']} examples): rerun with the same data and settings, or delete that folder"
            )
        set_peft_model_state_dict(model, state["adapter"], adapter_name=name)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step, losses, eval_before = state["step"], state["losses"], state["eval_before"]
        torch.set_rng_state(state["torch_rng"])
    resumed_from = step
    if step == 0:
        eval_before = _eval_loss(model, eval_enc, pad_id, s.batch_size)

    def save_checkpoint() -> None:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        _atomic_torch_save(
            {
                "adapter": get_peft_model_state_dict(model, adapter_name=name), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "step": step, "losses": losses, "eval_before": eval_before,
                "torch_rng": torch.get_rng_state(), "base": loaded.name, "total": total,
                "n_examples": len(examples),
            },
            ckpt_file,
        )

    bar = tqdm(total=total, initial=step, desc=f"train {name}", unit="step", disable=not progress)
    budget = step + stop_after if stop_after else None
    while step < total:
        if budget is not None and step >= budget:
            save_checkpoint()
            bar.close()
            return None
        epoch, pos = divmod(step, steps_per_epoch)
        perm = list(range(len(train_enc)))
        random.Random(s.seed * 1000 + epoch).shuffle(perm)
        chunk = [train_enc[j] for j in perm[pos * s.batch_size:(pos + 1) * s.batch_size]]
        batch = left_pad([q for q, _ in chunk], [n for _, n in chunk], pad_id)
        loss = answer_loss(model, batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        losses.append(float(loss.detach()))
        recent = sum(losses[-20:]) / len(losses[-20:])
        bar.set_postfix(loss=f"{recent:.3f}")
        bar.update(1)
        if step % s.checkpoint_every == 0 and step < total:
            save_checkpoint()
    bar.close()

    eval_after = _eval_loss(model, eval_enc, pad_id, s.batch_size)
    train_loss = sum(losses[-20:]) / max(len(losses[-20:]), 1)
    card = {
        "name": name,
        "base": base,
        "base_model": loaded.name,
        "base_folder": loaded.path.name,
        "data": data_description,
        "examples": len(train_enc),
        "eval_examples": len(eval_enc),
        "steps": step,
        "settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(s).items()},
        "final_train_loss": round(train_loss, 4),
        "eval_loss_before": None if eval_before is None else round(eval_before, 4),
        "final_eval_loss": None if eval_after is None else round(eval_after, 4),
        "system_prompt": system_prompt,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    model.peft_config[name].base_model_name_or_path = loaded.name  # portable: the model's name, not a cache path
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}-"))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; an adapter folder is meant to be shared
    try:
        model.save_pretrained(tmp, selected_adapters=[name])
        # peft nests a non-"default" adapter in a sub-folder; keep the folder flat
        if (tmp / name).is_dir():
            for f in (tmp / name).iterdir():
                os.replace(f, tmp / f.name)
            (tmp / name).rmdir()
        (tmp / CARD_FILE).write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
        (tmp / "README.md").write_text(_card_markdown(card), encoding="utf-8")
        if out_dir.exists():
            old = out_dir.parent / f".{out_dir.name}-old-{os.getpid()}"
            os.replace(out_dir, old)
            os.replace(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    return TrainResult(
        adapter_dir=out_dir, steps=step, train_loss=train_loss, eval_loss=eval_after, eval_loss_before=eval_before,
        seconds=time.perf_counter() - started, resumed_from=resumed_from, card=card,
    )


def _card_markdown(card: dict) -> str:
    s = card["settings"]
    return (
        f"# LoRA adapter `{card['name']}`\n\n"
        f"- base: {card['base_model']} (`{card['base']}`)\n"
        f"- data: {card['data'] or 'unspecified'} ({card['examples']} training examples, "
        f"{card['eval_examples']} held out for eval loss)\n"
        f"- LoRA: rank {s['rank']}, alpha {s['alpha']}, dropout {s['dropout']}, modules {', '.join(s['target_modules'])}"
        + (f" of the last {s['top_layers']} layers" if s.get("top_layers") else "") + "\n"
        f"- training: {card['steps']} steps, batch {s['batch_size']}, lr {s['lr']}, max length {s['max_length']}\n"
        f"- final train loss {card['final_train_loss']}; eval loss {card['eval_loss_before']} before -> "
        f"{card['final_eval_loss']} after\n"
        f"- created {card['created']} by `asymmetry expert train`\n"
    )


def read_card(adapter_dir: str | Path) -> dict | None:
    path = Path(adapter_dir) / CARD_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise AsymmetryError(f"adapter card {path} is not valid JSON ({exc}): retrain the adapter or fix the file")


def train_default(name: str, out_root: str | Path | None = None, *, resume: bool = False,
                  progress: bool = True) -> TrainResult:
    """Train one default expert (science, commonsense, scholar) from the shipped question sets, reproducibly."""
    from asymmetry.experts.config import BUILTIN_EXPERTS, adapters_package_dir
    from asymmetry.experts.data import DEFAULT_RECIPES, default_examples

    if name not in DEFAULT_RECIPES:
        raise AsymmetryError(f"no default recipe for {name!r}: choose from {', '.join(DEFAULT_RECIPES)}")
    recipe = DEFAULT_RECIPES[name]
    spec = next(e for e in BUILTIN_EXPERTS if e.name == name)
    settings = TrainSettings(**recipe["settings"])
    desc = ", ".join(f"{d} {sp}" + (f" (first {n} shuffled)" if n else "") for d, sp, n in recipe["train"])
    return train_adapter(
        name, default_examples(name), Path(out_root or adapters_package_dir()) / name, base=recipe["base"],
        system_prompt=spec.system_prompt, settings=settings, data_description=f"{desc}; style {recipe['style']}",
        resume=resume, progress=progress,
    )
