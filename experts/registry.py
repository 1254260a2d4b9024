"""The expert registry: experts from the config, LoRA adapters hot-swapped on one shared base.

Every base model loads once (:func:`asymmetry.experts.base.load_base`, with the config's dtype and placement).
All adapters of the experts built on that base are loaded as *named* adapters into ONE ``PeftModel``, each the first
time its expert is needed. :meth:`ExpertRegistry.model_for` then only switches the active adapter (or disables the LoRA
layers for an expert without adapter) — no reload. The switch is a state of the shared model, valid until the next
``model_for`` for that base; to run several experts in ONE batch, pass
``ExpertRegistry.batch_kwargs(names)`` (peft's per-row ``adapter_names``) as the forward kwargs.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from asymmetry.experts.config import PACKAGE_ADAPTERS, ExpertsConfig, ExpertSpec, adapters_package_dir

from asymmetry.errors import AsymmetryError

BASE_ROW = "__base__"  # peft's name for "no adapter" in a mixed batch


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
                 history: list[dict[str, str]] | None = None) -> list[dict[str, str]]:
        """Chat messages for one turn: system prompt (+ packed passages), earlier turns, the question."""
        system = self.system_prompt or ""
        if passages:
            system = (system + "\n\n" if system else "") + "Passages:\n" + passages
        msgs = [{"role": "system", "content": system}] if system else []
        return msgs + list(history or []) + [{"role": "user", "content": question}]

    def render(self, tokenizer, messages: list[dict[str, str]]) -> str:
        """The prompt text: the expert's ``prompt_template`` if set, else the model's chat template."""
        from asymmetry.experts.tokens import prompt_text

        return prompt_text(tokenizer, messages, self.prompt_template)


def resolve_adapter(adapter: str | None) -> str | None:
    """``builtin:NAME`` -> ``experts/adapters/NAME``; other paths are taken as given (``~`` expanded)."""
    if adapter is None:
        return None
    if adapter.startswith(PACKAGE_ADAPTERS):
        return str(adapters_package_dir() / adapter[len(PACKAGE_ADAPTERS):])
    return str(Path(adapter).expanduser())


def check_adapter(expert: str, adapter_dir: str | Path, base_name: str, base_path: Path | None = None) -> dict:
    """Validate an adapter folder for ``base_name``; return its peft config. Errors name the fix."""
    folder = Path(adapter_dir)
    cfg_file = folder / "adapter_config.json"
    if not cfg_file.is_file():
        hint = (
            f"train it with `asymmetry expert train-defaults {expert}`"
            if expert in ("science", "commonsense", "scholar")
            else f"train it with `asymmetry expert train {expert} --data FILE`"
        )
        raise AsymmetryError(
            f"adapter of expert {expert!r} not found: {folder} has no adapter_config.json; {hint}, "
            f"or fix experts.experts adapter in the config"
        )
    try:
        cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise AsymmetryError(f"{cfg_file} is not valid JSON ({exc}): retrain or restore the adapter")
    trained_on = cfg.get("base_model_name_or_path")
    card_file = folder / "asymmetry_card.json"
    claimed = {str(trained_on).lower(), Path(str(trained_on)).name.lower()} if trained_on else set()
    if card_file.is_file():
        card = json.loads(card_file.read_text(encoding="utf-8"))
        trained_on = card.get("base_model") or trained_on
        claimed = {str(card.get(k)).lower() for k in ("base_model", "base_folder") if card.get(k)} or claimed
    if trained_on:
        accepted = {base_name.lower()}
        if base_path is not None:
            accepted |= {str(base_path).lower(), base_path.name.lower()}
        if not claimed & accepted:
            raise AsymmetryError(
                f"adapter {folder} of expert {expert!r} was trained on {trained_on}, but the expert's base is "
                f"{base_name}: set that expert's base to the adapter's model, or retrain the adapter on {base_name}"
            )
    return cfg


class ExpertRegistry:
    """Experts by name; bases loaded once and shared; adapters as named adapters on one PeftModel per base."""

    def __init__(self, specs: list[ExpertSpec], *, default: str | None = None, dtype: str = "float32",
                 device_map: Any = None, max_memory: dict | None = None, offload_folder: str | None = None,
                 quantization: str | None = None):
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
        self.placement = {"dtype": dtype, "device_map": device_map, "max_memory": max_memory,
                              "offload_folder": offload_folder, "quantization": quantization}
        self._models: dict[str, Any] = {}  # base spec -> PeftModel or plain model
        self._loaded: dict[str, Any] = {}  # base spec -> LoadedBase
        self._lock = threading.RLock()

    @classmethod
    def from_config(cls, cfg: ExpertsConfig | None = None) -> ExpertRegistry:
        cfg = cfg or ExpertsConfig()
        return cls(cfg.specs(), default=cfg.default, dtype=cfg.dtype, device_map=cfg.device_map,
                   max_memory=cfg.max_memory, offload_folder=cfg.offload_folder, quantization=cfg.quantization)

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
    def base_for(self, name: str):
        """The shared :class:`LoadedBase` of an expert (loaded on first use)."""
        from asymmetry.experts.base import load_base

        expert = self.get(name)
        with self._lock:
            if expert.base not in self._loaded:
                self._loaded[expert.base] = load_base(expert.base, **self.placement)
            return self._loaded[expert.base]

    def _model_of_base(self, base: str, need: list[Expert] | None = None):
        """The one model serving every expert on ``base``: a PeftModel holding their adapters as named adapters
        (each added the first time its expert is needed), or the plain base while none is needed."""
        from asymmetry.experts.base import resolve_model

        with self._lock:
            if base not in self._models:  # another registry of this process may already have wrapped the shared base
                first = next(e for e in self._experts.values() if e.base == base)
                shared = self.base_for(first.name).peft_model
                if shared is not None:
                    self._models[base] = shared
            missing = [e for e in (need or []) if e.adapter and e.name not in getattr(
                self._models.get(base), "peft_config", {})]
            if base in self._models and not missing:
                return self._models[base]
            if missing:  # validate before loading anything or touching the shared model
                base_name, base_path = resolve_model(base)
                for e in missing:
                    check_adapter(e.name, e.adapter, base_name, base_path)
            first = next(e for e in self._experts.values() if e.base == base)
            loaded = self.base_for(first.name)
            model = self._models.get(base, loaded.model)
            for e in missing:
                from peft import PeftModel

                try:
                    if not hasattr(model, "peft_config"):
                        model = PeftModel.from_pretrained(loaded.model, e.adapter, adapter_name=e.name,
                                                          is_trainable=False)
                        loaded.peft_model = model  # load_base() callers then get the bare base (adapters disabled)
                    else:
                        model.load_adapter(e.adapter, adapter_name=e.name, is_trainable=False)
                except (RuntimeError, ValueError, KeyError) as exc:
                    raise AsymmetryError(
                        f"adapter {e.adapter} of expert {e.name!r} does not fit base {loaded.name} ({str(exc)[:200]}): "
                        f"it was probably trained on another base; retrain it or set the expert's base"
                    ) from exc
            model.eval()
            self._models[base] = model
            return model

    def model_for(self, name: str):
        """``(model, tokenizer)`` with expert ``name``'s adapter active on the shared base (bare base if none)."""
        expert = self.get(name)
        model = self._model_of_base(expert.base, [expert])
        tokenizer = self.base_for(name).tokenizer
        if hasattr(model, "peft_config"):
            with self._lock:
                if expert.adapter:
                    model.base_model.enable_adapter_layers()
                    model.set_adapter(expert.name)
                else:
                    model.base_model.disable_adapter_layers()
        return model, tokenizer

    def active(self, base: str) -> str | None:
        """The expert whose adapter is active on ``base`` (None when the bare base is active or not loaded)."""
        model = self._models.get(base)
        if model is None or not hasattr(model, "peft_config"):
            return None
        layers_on = any(not getattr(m, "disable_adapters", True) for m in model.modules() if hasattr(m, "lora_A"))
        return model.active_adapter if layers_on else None

    def batch_kwargs(self, names: list[str]) -> dict[str, Any]:
        """Forward kwargs for ONE batch whose row ``i`` is answered by expert ``names[i]`` (all on the same base).

        Returns ``{"adapter_names": [...]}`` (peft's mixed-adapter batch; bare experts map to ``__base__``) and
        enables the adapter layers of that base's model. Pass it as the sampler's ``forward_kwargs``.
        """
        experts = [self.get(n) for n in names]
        bases = {e.base for e in experts}
        if len(bases) != 1:
            raise AsymmetryError(
                f"one batch can only mix experts of one base; got bases {', '.join(sorted(bases))}: split the batch"
            )
        model = self._model_of_base(bases.pop(), experts)
        if not hasattr(model, "peft_config"):
            return {}
        with self._lock:
            model.base_model.enable_adapter_layers()
        return {"adapter_names": [e.name if e.adapter else BASE_ROW for e in experts]}

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
