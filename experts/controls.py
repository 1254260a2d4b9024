"""The trained rows of control tokens (issue 17, part 4): an expert trained to emit ``<|recall|>`` and the rest.

Training (:mod:`asymmetry.experts.training`) adds the ``[controls]`` tokens to a fresh base and trains their
embedding rows with peft's ``trainable_token_indices`` (a head tied to the embedding, as SmolLM2's and the 0.5B's,
shares them; an untied head trains its own rows). The adapter folder then keeps the LoRA weights as any adapter does
and the control rows apart, in ``control_rows.safetensors`` (``input``: (C, D) embedding rows, ``output``: (C, D)
head rows when the head is untied), and the card's ``controls`` records ``{"tokens": {name: token}, "ids": [...]}``.

Why apart: a peft trainable-tokens wrapper rebuilds the whole (V, D) matrix at every forward and knows no per-row
adapter choice; the control rows are only ever read for control tokens, which experts without them never see in
their output (the sampler masks them) and which a prompt holds only to steer. So loading such an expert
(:func:`load_control_rows`) writes its rows into the pooled base, once: the base's tokenizer must hold the same tokens
at the same ids (the engine adds the vocabulary's tokens before).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from asymmetry.errors import AsymmetryError

CONTROL_ROWS = "control_rows.safetensors"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
CARD_FILE = "asymmetry_card.json"


def trainable_rows(loaded, token_ids: list[int] | None) -> list[int] | dict[str, list[int]] | None:
    """peft's ``trainable_token_indices`` for ``token_ids``: the input embedding's rows, and the head's too when it
    is not tied to the embedding."""
    if not token_ids:
        return None
    head = loaded.model.get_output_embeddings()
    tied = head is None or head.weight is loaded.model.get_input_embeddings().weight
    if tied:
        return list(token_ids)
    names = {id(m): n.rsplit(".", 1)[-1] for n, m in loaded.model.named_modules()}
    return {names[id(loaded.model.get_input_embeddings())]: list(token_ids), names[id(head)]: list(token_ids)}


def split_control_rows(folder: Path, token_ids: list[int]) -> None:
    """Move the trained control rows out of a saved adapter in ``folder`` into :data:`CONTROL_ROWS`; the adapter
    keeps only its LoRA weights (its config no longer names trainable tokens)."""
    from safetensors.torch import load_file, save_file

    weights = load_file(folder / ADAPTER_WEIGHTS)
    rows = {k: v for k, v in weights.items() if "trainable_tokens" in k}
    if not rows:
        raise AsymmetryError(f"the adapter saved in {folder} holds no trained control rows: peft changed its layout")
    picked: dict[str, torch.Tensor] = {}
    for key, value in rows.items():
        which = "input" if "embed" in key else "output"
        if value.shape[0] != len(token_ids):
            raise AsymmetryError(f"{key} has {value.shape[0]} rows for {len(token_ids)} control tokens")
        picked[which] = value.detach().float().contiguous()
    save_file({k: v for k, v in weights.items() if k not in rows}, folder / ADAPTER_WEIGHTS)
    save_file(picked, folder / CONTROL_ROWS)
    config = json.loads((folder / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    config["trainable_token_indices"] = None
    (folder / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def card_controls(card: dict | None) -> dict | None:
    """The ``controls`` entry of an adapter card: ``{"tokens": {name: token}, "ids": [...]}``, or None."""
    controls = (card or {}).get("controls")
    if controls is None:
        return None
    if not isinstance(controls, dict) or not isinstance(controls.get("tokens"), dict) or not isinstance(
            controls.get("ids"), list) or len(controls["ids"]) != len(controls["tokens"]):
        raise AsymmetryError(f"adapter card 'controls' is malformed ({str(controls)[:120]}): retrain the adapter")
    return controls


def adapter_controls(adapter_dir: str | Path) -> dict | None:
    """The card's ``controls`` of the adapter in ``adapter_dir`` (None when it was not trained with control
    tokens, or has no card)."""
    card = Path(adapter_dir) / CARD_FILE
    if not card.is_file():
        return None
    try:
        data = json.loads(card.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise AsymmetryError(f"adapter card {card} is not valid JSON ({exc}): retrain the adapter or restore it")
    controls = card_controls(data)
    if controls is not None and not (Path(adapter_dir) / CONTROL_ROWS).is_file():
        raise AsymmetryError(f"adapter {adapter_dir} was trained with control tokens but lacks {CONTROL_ROWS}: "
                             "restore the folder or retrain the adapter")
    return controls


def load_control_rows(model, tokenizer, adapter_dir: str | Path, controls: dict) -> None:
    """Write the control rows of the adapter in ``adapter_dir`` into ``model`` (the pooled base), whose tokenizer
    must already hold the card's control tokens at the card's ids."""
    from safetensors.torch import load_file

    tokens, ids = list(controls["tokens"].values()), [int(i) for i in controls["ids"]]
    have = [tokenizer.convert_tokens_to_ids(t) for t in tokens]
    if have != ids:
        raise AsymmetryError(
            f"the adapter in {adapter_dir} was trained with the control tokens {tokens} at ids {ids}, but this base "
            f"has them at {have}: use the [controls] vocabulary it was trained with (its card, 'controls'), or "
            "retrain it with this one")
    rows = load_file(Path(adapter_dir) / CONTROL_ROWS)
    index = torch.tensor(ids, dtype=torch.long)
    with torch.no_grad():
        embed = model.get_input_embeddings().weight
        embed.index_copy_(0, index.to(embed.device), rows["input"].to(embed.device, embed.dtype))
        head = model.get_output_embeddings()
        if hasattr(head, "refresh"):  # a tied head's int8 copy (experts.quantize.TiedInt8Head) takes the new rows
            head.refresh()
        if "output" in rows and head is not None and head.weight is not embed:
            if not hasattr(head, "weight") or head.weight.dtype not in (torch.float32, torch.bfloat16, torch.float16):
                raise AsymmetryError(f"the base's output head ({type(head).__name__}) cannot take the control rows of "
                                     f"{adapter_dir}: set [experts] quantize_head = false for this base")
            head.weight.index_copy_(0, index.to(head.weight.device), rows["output"].to(head.weight.device,
                                                                                       head.weight.dtype))
