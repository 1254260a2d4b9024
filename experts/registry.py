"""The expert registry: experts from the config, each a pooled base plus an optional LoRA adapter.

Bases come from a :class:`~asymmetry.experts.pool.ModelPool` (one per placement, shared by every expert on it); each
expert's adapter is attached to its base once, as a named peft adapter. :meth:`ExpertRegistry.model` returns an
:class:`~asymmetry.experts.pool.ExpertModel` whose forwards name the adapter per row, so experts of one base share
one batch (``batch_kwargs(names)``) and several requests can use the model at once.
"""
from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from asymmetry.errors import AsymmetryError
from asymmetry.experts.base import Placement, resolve_model
from asymmetry.experts.config import PACKAGE_ADAPTERS, ExpertsConfig, ExpertSpec, adapters_package_dir
from asymmetry.experts.pool import ExpertModel, ModelPool, PooledBase
from asymmetry.experts.prompts import build_messages, render_prompt
from asymmetry.integrity import verify_folder_checksums


@dataclass
class Expert:
    name: str
    description: str
    base: str
    adapter: str | None  # resolved adapter folder, or None for the bare base
    system_prompt: str | None
    retrieval: bool
    k: int
    sampler: dict[str, Any] = field(default_factory=dict)
    negative_prompt: str | None = None
    prompt_template: str | None = None

    def messages(self, question: str, passages: str | None = None,
                 history: list[dict[str, str]] | None = None, instruction: str | None = None) -> list[dict[str, str]]:
        """Chat messages for one turn: system prompt (+ instruction, + packed passages), earlier turns, the question."""
        return build_messages(question, system=self.system_prompt, passages=passages, history=history,
                              instruction=instruction)

    def render(self, tokenizer, messages: list[dict[str, str]]) -> str:
        """The prompt text: the expert's ``prompt_template`` if set, else the model's chat template."""
        return render_prompt(tokenizer, messages, self.prompt_template)


def resolve_adapter(adapter: str | None) -> str | None:
    """``builtin:NAME`` -> ``experts/adapters/NAME``; other paths are taken as given (``~`` expanded)."""
    if adapter is None:
        return None
    if adapter.startswith(PACKAGE_ADAPTERS):
        return str(adapters_package_dir() / adapter[len(PACKAGE_ADAPTERS):])
    return str(Path(adapter).expanduser())


def check_adapter(expert: str, adapter_dir: str | Path, base_name: str, base_path: Path | None = None) -> dict:
    """Validate an adapter folder for ``base_name``; return its peft config. Errors name the fix."""
    cfg, trained_on, claimed = check_adapter_files(expert, adapter_dir)
    if trained_on:
        accepted = {base_name.lower()}
        if base_path is not None:
            accepted |= {str(base_path).lower(), base_path.name.lower()}
        if not claimed & accepted:
            raise AsymmetryError(
                f"adapter {adapter_dir} of expert {expert!r} was trained on {trained_on}, but the expert's base is "
                f"{base_name}: set that expert's base to the adapter's model, or retrain the adapter on {base_name}"
            )
    return cfg


def check_adapter_files(expert: str, adapter_dir: str | Path) -> tuple[dict, str | None, set[str]]:
    """The checks of an adapter folder that need no model: present, intact (its SHA256SUMS, or a complete
    safetensors header), readable JSON. Returns (peft config, the base it claims, the names that base goes by)."""
    folder = Path(adapter_dir)
    cfg_file = folder / "adapter_config.json"
    hint = (
        f"train it with `asymmetry expert train-defaults {expert}`"
        if expert in ("science", "commonsense", "scholar", "grounded")
        else f"train it with `asymmetry expert train {expert} --data FILE`"
    )
    if not cfg_file.is_file():
        raise AsymmetryError(
            f"adapter of expert {expert!r} not found: {folder} has no adapter_config.json; {hint}, "
            f"or fix experts.experts adapter in the config"
        )
    if not verify_folder_checksums(folder, f"`{hint.removeprefix('train it with ').strip('`')}` or restore it",
                                   what=f"adapter of expert {expert!r}"):
        _check_weights(expert, folder, hint)  # an adapter saved before checksums: at least a complete file
    cfg = _json_object(cfg_file, f"{hint}, or restore the adapter")
    trained_on = cfg.get("base_model_name_or_path")
    card_file = folder / "asymmetry_card.json"
    claimed = {str(trained_on).lower(), Path(str(trained_on)).name.lower()} if trained_on else set()
    if card_file.is_file():
        card = _json_object(card_file, f"{hint}, or restore the adapter")
        trained_on = card.get("base_model") or trained_on
        claimed = {str(card.get(k)).lower() for k in ("base_model", "base_folder") if card.get(k)} or claimed
    return cfg, trained_on, claimed


def _json_object(path: Path, fix: str) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise AsymmetryError(f"{path} is damaged, not valid JSON ({exc}): {fix}") from None
    if not isinstance(data, dict):
        raise AsymmetryError(f"{path} is damaged (a JSON {type(data).__name__}, not an object): {fix}")
    return data


def _check_weights(expert: str, folder: Path, hint: str) -> None:
    """A readable safetensors header whose tensors the file covers (a truncated file fails here, before any load)."""
    from safetensors import SafetensorError, safe_open  # only for adapters saved without SHA256SUMS

    weights = folder / "adapter_model.safetensors"
    if not weights.is_file():
        return  # peft's .bin format, or its own error when attached
    try:
        with safe_open(str(weights), framework="np") as fh:
            list(fh.keys())
    except (SafetensorError, OSError) as exc:
        raise AsymmetryError(f"adapter of expert {expert!r}: {weights} is damaged or truncated "
                             f"({str(exc)[:120]}): {hint}, or restore it") from None


class ExpertRegistry:
    """Experts by name over a :class:`ModelPool`: each expert is a base of the pool plus (optionally) one named
    adapter attached to it once. Nothing is switched for the process; :meth:`model` hands out an
    :class:`ExpertModel` whose forwards name their adapter per row."""

    def __init__(self, specs: list[ExpertSpec], *, default: str | None = None, pool: ModelPool | None = None,
                 dtype: str = "float32", device_map: Any = None, max_memory: dict | None = None,
                 offload_folder: str | None = None, quantization: str | None = None, quantize: str = "auto",
                 quantize_head: bool = True):
        self._experts: dict[str, Expert] = {}
        for spec in specs:
            if spec.name in self._experts:
                raise AsymmetryError(f"duplicate expert name {spec.name!r}: each expert needs a unique name")
            self._experts[spec.name] = Expert(
                name=spec.name, description=spec.description, base=spec.base, adapter=resolve_adapter(spec.adapter),
                system_prompt=spec.system_prompt, retrieval=spec.retrieval, k=spec.k, sampler=dict(spec.sampler),
                negative_prompt=spec.negative_prompt, prompt_template=spec.prompt_template,
            )
        self.default = default or next(iter(self._experts), None)
        self.pool = pool if pool is not None else ModelPool()
        self.placement = Placement(dtype=dtype, device_map=device_map, max_memory=max_memory,
                                   offload_folder=offload_folder, quantization=quantization, quantize=quantize,
                                   quantize_head=quantize_head)
        self._checked: set[str] = set()  # experts whose adapter folder was validated against its base
        self._lock = threading.Lock()

    @classmethod
    def from_config(cls, cfg: ExpertsConfig | None = None, pool: ModelPool | None = None) -> ExpertRegistry:
        cfg = cfg or ExpertsConfig()
        return cls(cfg.specs(), default=cfg.default, pool=pool, dtype=cfg.dtype, device_map=cfg.device_map,
                   max_memory=cfg.max_memory, offload_folder=cfg.offload_folder, quantization=cfg.quantization,
                   quantize=cfg.quantize, quantize_head=cfg.quantize_head)

    # --- lookup ---------------------------------------------------------------------------------------------------
    def names(self) -> list[str]:
        return list(self._experts)

    def get(self, name: str) -> Expert:
        try:
            return self._experts[name]
        except KeyError:
            raise AsymmetryError(
                f"unknown expert {name!r}: choose one of {', '.join(self._experts)} "
                f"(see `asymmetry expert list`), or add it under [experts] in the config"
            ) from None

    def __contains__(self, name: str) -> bool:
        return name in self._experts

    def __iter__(self):
        return iter(self._experts.values())

    # --- models ---------------------------------------------------------------------------------------------------
    def base_for(self, name: str) -> PooledBase:
        """The pooled base of expert ``name`` (loaded on first use, shared with every expert on it)."""
        return self.pool.base(self.get(name).base, self.placement)

    def validate(self, name: str | None = None) -> None:
        """Fail now, before any model loads, when ``name`` is not an expert or its adapter is missing or damaged
        (``None``: every expert, as the router may pick any)."""
        for expert in [self.get(name)] if name is not None else list(self._experts.values()):
            if expert.adapter:
                check_adapter_files(expert.name, expert.adapter)

    def model(self, name: str) -> ExpertModel:
        """Expert ``name`` as an :class:`ExpertModel`: its adapter attached (once) to the shared base."""
        expert = self.get(name)
        if expert.adapter and name not in self._checked:  # validate before loading anything
            check_adapter_files(name, expert.adapter)  # before a base is converted: a missing adapter fails at once
            base_name, base_path = resolve_model(expert.base)
            check_adapter(name, expert.adapter, base_name, base_path)
            with self._lock:
                self._checked.add(name)
        return self.base_for(name).handle(name if expert.adapter else None, expert.adapter)

    def batch_kwargs(self, names: list[str]) -> dict[str, Any]:
        """Forward kwargs for ONE batch whose row ``i`` is answered by expert ``names[i]`` (all on one base):
        ``{"adapter_names": [...]}`` (bare experts map to ``__base__``), or ``{}`` when the base has no adapters."""
        bases = {self.get(n).base for n in names}
        if len(bases) != 1:
            raise AsymmetryError(
                f"one batch can only mix experts of one base; got bases {', '.join(sorted(bases))}: split the batch"
            )
        handles = [self.model(n) for n in names]
        rows = [h.row_name for h in handles]
        return {} if rows[0] is None else {"adapter_names": rows}

    def describe(self) -> list[dict[str, Any]]:
        """One JSON-able dict per expert (for ``asymmetry expert list --json``)."""
        rows = []
        for e in self._experts.values():
            status = "none"
            if e.adapter:
                status = "present" if (Path(e.adapter) / "adapter_config.json").is_file() else "missing"
            rows.append({
                "name": e.name, "description": e.description, "base": e.base, "adapter": e.adapter,
                "adapter_status": status, "system_prompt": e.system_prompt,
                "prompt_template": "custom" if e.prompt_template else "chat template", "retrieval": e.retrieval,
                "k": e.k, "sampler": e.sampler, "negative_prompt": e.negative_prompt, "default": e.name == self.default,
            })
        return rows
