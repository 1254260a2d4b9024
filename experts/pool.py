"""The model pool: each base loaded once per placement, every adapter of a base attached once, chosen per row.

A :class:`ModelPool` is passed in (the engine owns one; tests share one per session); there is no module-level
cache. A :class:`PooledBase` is one loaded base on one placement. Adapters are attached to it as *named* adapters
of one ``PeftModel`` and are never switched for the process: every forward names its adapter per row (peft's
``adapter_names``, ``__base__`` for the bare base), so one model serves any mix of experts, in one batch or from
several threads. A forward that names no adapter runs the bare base (no adapter is active by default).

peft applies ``adapter_names`` through forward hooks registered on the shared LoRA modules for the length of one
forward, so two forwards of one base must not overlap: whoever runs a forward holds ``PooledBase.lock`` for that
forward (one decode step, one scoring pass), never across a ``yield``.

    pool = ModelPool()
    base = pool.base("smollm2")                  # loaded on first use
    science = base.handle("science", adapter_dir)  # attaches the adapter once; ExpertModel
    with science.lock:
        logits = science.model(input_ids=ids, **science.forward_kwargs(rows=1)).logits
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from asymmetry.errors import AsymmetryError
from asymmetry.experts.base import LoadedBase, Placement, load_model, resolve_model

BASE_ROW = "__base__"  # peft's name for "no adapter" in a mixed batch


@dataclass(frozen=True)
class ExpertModel:
    """One expert's view of a pooled base: the shared model, its tokenizer and the adapter its rows use."""

    base: PooledBase
    adapter: str | None  # the adapter name on the base, None for the bare base

    @property
    def model(self):
        return self.base.model

    @property
    def tokenizer(self):
        return self.base.tokenizer

    @property
    def lock(self) -> threading.RLock:
        return self.base.lock

    @property
    def row_name(self) -> str | None:
        """This expert's entry in peft's per-row ``adapter_names`` (None when the base carries no adapters)."""
        if not self.base.adapters:
            return None
        return self.adapter or BASE_ROW

    def row_kwargs(self) -> dict[str, Any]:
        """Per-row forward kwargs of one row of this expert (the decode loop turns them into per-row lists)."""
        name = self.row_name
        return {} if name is None else {"adapter_names": name}

    def forward_kwargs(self, rows: int) -> dict[str, Any]:
        """Forward kwargs for a batch of ``rows`` rows, all of this expert."""
        name = self.row_name
        return {} if name is None else {"adapter_names": [name] * rows}


@dataclass(eq=False)
class PooledBase:
    """A base model loaded once on one placement, holding every attached adapter as a named peft adapter."""

    loaded: LoadedBase
    placement: Placement
    lock: threading.RLock = field(default_factory=threading.RLock)
    adapters: dict[str, str] = field(default_factory=dict)  # adapter name -> folder it was loaded from
    peft_model: Any = None
    control_ids: list[int] = field(default_factory=list)  # ids of the control tokens added to it (by any engine)

    @property
    def name(self) -> str:
        return self.loaded.name

    @property
    def path(self) -> Path:
        return self.loaded.path

    @property
    def tokenizer(self):
        return self.loaded.tokenizer

    @property
    def model(self):
        """The model every forward goes through: the ``PeftModel`` once an adapter is attached, else the base."""
        return self.peft_model if self.peft_model is not None else self.loaded.model

    @property
    def device(self):
        return self.loaded.model.device

    def bare(self) -> ExpertModel:
        return ExpertModel(self, None)

    def handle(self, name: str | None, adapter_dir: str | os.PathLike | None = None) -> ExpertModel:
        """The :class:`ExpertModel` of adapter ``name`` (attached from ``adapter_dir`` the first time); ``None``
        is the bare base."""
        if name is None or adapter_dir is None:
            return self.bare()
        self.attach(name, adapter_dir)
        return ExpertModel(self, name)

    def attach(self, name: str, adapter_dir: str | os.PathLike) -> None:
        """Load the adapter in ``adapter_dir`` as ``name`` (once). The caller validated the folder."""
        from peft import PeftModel  # heavy: only when an adapter is attached

        folder = str(adapter_dir)
        with self.lock:
            known = self.adapters.get(name)
            if known is not None:
                if known != folder:
                    raise AsymmetryError(
                        f"adapter name {name!r} is already attached to {self.name} from {known}, not {folder}: "
                        "give each expert a unique name"
                    )
                return
            if name == BASE_ROW:
                raise AsymmetryError(f"{BASE_ROW!r} is reserved for the bare base: rename that expert")
            try:
                if self.peft_model is None:
                    self.peft_model = PeftModel.from_pretrained(self.loaded.model, folder, adapter_name=name,
                                                                is_trainable=False)
                else:
                    self.peft_model.load_adapter(folder, adapter_name=name, is_trainable=False)
            except (RuntimeError, ValueError, KeyError) as exc:
                raise AsymmetryError(
                    f"adapter {folder} of expert {name!r} does not fit base {self.name} ({str(exc)[:200]}): "
                    "it was probably trained on another base; retrain it or set the expert's base"
                ) from exc
            self.peft_model.eval()
            self.adapters[name] = folder
            self._no_default_adapter()

    def _no_default_adapter(self) -> None:
        """Make a forward WITHOUT ``adapter_names`` run the bare base: no LoRA layer has an active adapter (peft
        would otherwise apply the first loaded adapter to every caller that does not name one per row)."""
        from peft.tuners.tuners_utils import BaseTunerLayer

        for module in self.peft_model.modules():
            if isinstance(module, BaseTunerLayer):
                module.set_adapter([], inference_mode=True)


class ModelPool:
    """Bases by (model folder, placement), each loaded once. Thread-safe; pass one pool to everything that
    should share models (the engine's experts, an evaluation, the tests of one session)."""

    def __init__(self) -> None:
        self._bases: dict[tuple, PooledBase] = {}  # (model folder, placement) -> base
        self._by_spec: dict[tuple, PooledBase] = {}  # (name or path as given, placement) -> base: no lookup per request
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"ModelPool({[b.name for b in self._bases.values()]})"

    def __len__(self) -> int:
        return len(self._bases)

    def base(self, spec: str | os.PathLike | None = None, placement: Placement | None = None) -> PooledBase:
        """The pooled base for a model name or path (see :func:`resolve_model`), loaded on first use."""
        placement = placement or Placement()
        given = (str(spec or ""), placement.key())
        known = self._by_spec.get(given)
        if known is not None:
            return known
        _, path = resolve_model(spec)  # may convert a GGUF once; stats files, so it runs once per spec
        key = (str(path), placement.key())
        with self._lock:  # loads are rare; holding the pool lock keeps one load per key
            if key not in self._bases:
                self._bases[key] = PooledBase(load_model(spec, placement), placement)
            self._by_spec[given] = self._bases[key]
            return self._bases[key]
