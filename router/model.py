"""The switch router: a small head over the shared query embedding, with calibrated probabilities and a fallback.

Training runs in torch (a logistic head, or one hidden ReLU layer); prediction runs in numpy on the saved weights, so
routing a question costs microseconds beyond the embedding and never imports torch. Probabilities are calibrated by
temperature scaling on a calibration split. A question whose top probability is below ``threshold`` goes to the
``fallback`` expert; ``top2`` feeds the mixture mode.

The router is saved as one JSON file (weights as base64 float32) whose manifest names the embedding model, its
dimension, the label set, the fallback, the training data and the held-out metrics.

Dimensions: N questions, B a training batch, D embedding size, H hidden units, L labels.
"""

from __future__ import annotations

import base64
import datetime as _dt
import json
import logging
import math
import os
import shlex
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import trange

from asymmetry import defaults
from asymmetry.atomic import atomic_path
from asymmetry.embedder import Embedder, embedding_model_name
from asymmetry.errors import AsymmetryError
from asymmetry.integrity import finite_number, positive_int, verify_checksum, write_checksum
from asymmetry.router.config import DEFAULT_HEAD, HEAD_LR, HEADS

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
DEFAULT_ROUTER_FILE = Path(__file__).with_name("default_router.json")  # committed, trained on the shipped sets
ROUTER_FILENAME = "router.json"


def home_router_path() -> Path:
    """Where ``asymmetry router train`` writes by default: ``<home>/router/router.json``."""
    return defaults.home() / "router" / ROUTER_FILENAME


def default_router_path() -> Path:
    """The router used when none is named: a retrained one in the home folder, else the committed one."""
    path = home_router_path()
    return path if path.is_file() else DEFAULT_ROUTER_FILE


def retrain_command(path: Path) -> str:
    """The fix for a damaged router file: retrain it (the committed one: into the home folder, which load prefers)."""
    if path.resolve() == DEFAULT_ROUTER_FILE.resolve():
        return "asymmetry router train (it writes a router into ASYMMETRY_HOME, used from then on) or reinstall"
    return f"asymmetry router train --out {shlex.quote(str(path))}"


def _resolve(path: str | os.PathLike | None) -> Path:
    if path is None:
        return default_router_path()
    path = Path(path).expanduser()
    return path / ROUTER_FILENAME if path.is_dir() or path.suffix != ".json" else path


@dataclass
class Route:
    """Where one question goes. ``expert`` is the fallback when ``confidence`` (the top probability) is too low."""

    expert: str
    confidence: float
    probabilities: dict[str, float]
    top2: list[tuple[str, float]]
    label: str = ""  # the most probable label, even when the fallback answers
    fallback: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"expert": self.expert, "confidence": self.confidence, "probabilities": dict(self.probabilities),
                "top2": [list(t) for t in self.top2], "label": self.label, "fallback": self.fallback}


def _encode(a: np.ndarray) -> dict[str, Any]:
    a = np.ascontiguousarray(a, dtype="<f4")
    return {"shape": list(a.shape), "data": base64.b64encode(a.tobytes()).decode("ascii")}


def _decode(d: dict[str, Any], where: str) -> np.ndarray:
    try:
        a = np.frombuffer(base64.b64decode(d["data"]), dtype="<f4").reshape(d["shape"])
    except (KeyError, ValueError, TypeError) as exc:
        raise AsymmetryError(f"router file {where} has a corrupt weight array ({exc}): retrain with asymmetry router train")
    return a.astype(np.float32)


@dataclass
class Router:
    """A trained switch classifier. ``layers`` are ``(W, b)`` pairs, W of shape (out, in); ReLU between layers.

    ``embedder`` is used only by :meth:`route_text` (made from ``embedding_model`` when first needed); the hot path
    :meth:`route` takes the query embedding the engine computed once."""

    labels: list[str]
    layers: list[tuple[np.ndarray, np.ndarray]]
    temperature: float = 1.0
    threshold: float = 0.5
    fallback: str = "general"
    embedding_model: str = defaults.DEFAULT_EMBEDDING_NAME
    dim: int = 384
    manifest: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None
    embedder: Embedder | None = field(default=None, repr=False, compare=False)
    _fast: list | None = field(default=None, init=False, repr=False, compare=False)  # transposed weights for route()

    def __post_init__(self):
        if len(set(self.labels)) != len(self.labels) or len(self.labels) < 2:
            raise AsymmetryError(f"router labels {self.labels} must be at least two distinct expert names")
        if self.fallback in self.labels:
            raise AsymmetryError(f"fallback expert {self.fallback!r} is also a router label: give the fallback its own name")
        if not 0.0 <= self.threshold <= 1.0:
            raise AsymmetryError(f"router threshold {self.threshold} is outside [0, 1]: use e.g. 0.5")
        if not self.temperature > 0:
            raise AsymmetryError(f"router temperature {self.temperature} must be positive: retrain the router")
        if self.layers[0][0].shape[1] != self.dim or self.layers[-1][0].shape[0] != len(self.labels):
            raise AsymmetryError("router weights do not match its dimension and labels: retrain with asymmetry router train")

    # -- prediction ----------------------------------------------------------------------------------------------
    def logits(self, embeddings: np.ndarray) -> np.ndarray:
        """Calibrated logits, (N, D) -> (N, L)."""
        x = np.asarray(embeddings, dtype=np.float32)
        if x.ndim == 1:
            x = x[None, :]  # (1, D)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise AsymmetryError(
                f"router expects {self.dim}-d embeddings of {self.embedding_model}, got shape {tuple(np.shape(embeddings))}: "
                "embed the query with the same model the router was trained on"
            )
        for i, (w, b) in enumerate(self.layers):
            x = x @ w.T + b  # (N, out)
            if i < len(self.layers) - 1:
                x = np.maximum(x, 0.0)  # (N, H)
        return x / self.temperature  # (N, L)

    def predict_proba(self, embeddings: np.ndarray) -> np.ndarray:
        """Calibrated probabilities, (N, D) -> (N, L), columns in ``self.labels`` order."""
        z = self.logits(embeddings)  # (N, L)
        z = z - z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)  # (N, L)

    def _route_row(self, p: np.ndarray) -> Route:
        order = np.argsort(-p)
        top, second = int(order[0]), int(order[1])
        confidence = float(p[top])
        label = self.labels[top]
        fallback = confidence < self.threshold
        return Route(
            expert=self.fallback if fallback else label,
            confidence=confidence,
            probabilities={name: float(v) for name, v in zip(self.labels, p)},
            top2=[(label, confidence), (self.labels[second], float(p[second]))],
            label=label,
            fallback=fallback,
        )

    def route(self, embedding: np.ndarray) -> Route:
        """Route one question from its precomputed (shared) embedding, shape (D,) or (1, D).

        The hot path of every question: plain Python floats after one small matmul per layer (~10 us on a free core).
        """
        x = np.asarray(embedding, dtype=np.float32)
        if x.shape != (self.dim,):
            if x.shape == (1, self.dim):
                x = x[0]
            elif x.ndim == 2 and x.shape[1] == self.dim:
                raise AsymmetryError(f"route() takes one embedding, got {x.shape[0]}: use route_batch() for several")
            else:
                self.logits(x)  # raises the shape error
        if not np.isfinite(x).all():
            raise AsymmetryError("the query embedding holds NaN or infinite values: re-embed the question")
        if self._fast is None:
            self._fast = [(np.ascontiguousarray(w.T), b) for w, b in self.layers]  # (in, out), (out,)
        for i, (wt, b) in enumerate(self._fast):
            x = x @ wt + b  # (out,)
            if i < len(self._fast) - 1:
                x = np.maximum(x, 0.0)  # (H,)
        z = [v / self.temperature for v in x.tolist()]
        top = max(z)
        e = [math.exp(v - top) for v in z]
        total = sum(e)
        p = [v / total for v in e]
        first, second = sorted(range(len(p)), key=p.__getitem__, reverse=True)[:2]
        label, confidence = self.labels[first], p[first]
        fallback = confidence < self.threshold
        return Route(
            expert=self.fallback if fallback else label,
            confidence=confidence,
            probabilities=dict(zip(self.labels, p)),
            top2=[(label, confidence), (self.labels[second], p[second])],
            label=label,
            fallback=fallback,
        )

    def route_batch(self, embeddings: np.ndarray) -> list[Route]:
        return [self._route_row(row) for row in self.predict_proba(embeddings)]

    def route_text(self, text: str | list[str]) -> Route | list[Route]:
        """Embed with the router's embedding model, then route (prefer ``route`` with the shared embedding)."""
        texts = [text] if isinstance(text, str) else list(text)
        if not texts or not all(isinstance(t, str) and t.strip() for t in texts):
            raise AsymmetryError("route_text needs a non-empty question")
        if self.embedder is None:
            self.embedder = Embedder(self.embedding_model)
        routes = self.route_batch(self.embedder.encode(texts))  # (N, D) -> N routes
        return routes[0] if isinstance(text, str) else routes

    # -- persistence ---------------------------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        manifest = dict(self.manifest)
        manifest.update(
            format_version=FORMAT_VERSION,
            embedding_model=self.embedding_model,
            dim=self.dim,
            labels=list(self.labels),
            experts=[*self.labels, self.fallback],
            fallback=self.fallback,
            threshold=self.threshold,
            temperature=self.temperature,
        )
        return {"manifest": manifest, "layers": [{"weight": _encode(w), "bias": _encode(b)} for w, b in self.layers]}

    def save(self, path: str | os.PathLike | None = None) -> Path:
        """Write atomically (temp file + rename); default ``<home>/router/router.json``."""
        path = _resolve(path) if path is not None else home_router_path()
        text = json.dumps(self.to_json(), indent=1) + "\n"
        with atomic_path(path, suffix=".json") as tmp:
            tmp.write_text(text, encoding="utf-8")
        write_checksum(path)  # router.json.sha256, verified by load
        self.path = path
        return path

    @classmethod
    def from_config(cls, config, expert_names: list[str] | None = None, *,
                    embedder: Embedder | None = None) -> Router:
        """Load the router a whole :class:`asymmetry.config.Config` names ([router] path, threshold, fallback), checked
        against ``expert_names`` and the [index] embedding model."""
        rc = config.router
        return cls.load(rc.path, expert_names, embedding_model=config.index.embedding_model,
                        threshold=rc.threshold, fallback=rc.fallback, embedder=embedder)

    @classmethod
    def load(
        cls,
        path: str | os.PathLike | None = None,
        expert_names: list[str] | None = None,
        *,
        embedding_model: str | None = None,
        threshold: float | None = None,
        fallback: str | None = None,
        embedder: Embedder | None = None,
    ) -> Router:
        """Load a saved router and check it against the caller's experts and embedding model.

        ``path`` None: ``<home>/router/router.json`` if it exists, else the committed default router.
        ``expert_names``: the experts that exist; every router label and the fallback must be among them.
        ``embedding_model``: the configured embedding model (a name or folder; None = the embedded default); it must
        be the one the router was trained on. ``threshold`` / ``fallback`` override the saved values.
        ``embedder``: the shared embedder (used by :meth:`route_text` only); it must be that model too.
        """
        path = _resolve(path)
        if not path.is_file():
            raise AsymmetryError(f"no router at {path}: train one with asymmetry router train --out {path}")
        verify_checksum(path, retrain_command(path), what="router file")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            m = data["manifest"]
            layers = [(_decode(layer["weight"], str(path)), _decode(layer["bias"], str(path))) for layer in data["layers"]]
            labels, saved_fallback = list(m["labels"]), m["fallback"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise AsymmetryError(f"router file {path} is unreadable ({exc}): retrain with {retrain_command(path)}")
        if m.get("format_version") != FORMAT_VERSION:
            raise AsymmetryError(
                f"router file {path} has format {m.get('format_version')}, this version reads {FORMAT_VERSION}: retrain it"
            )
        wanted = embedding_model_name(embedding_model)
        if m["embedding_model"] != wanted:
            raise AsymmetryError(
                f"router {path} was trained on embeddings of {m['embedding_model']!r} but the configured embedding "
                f"model is {wanted!r}: retrain it with asymmetry router train (or configure {m['embedding_model']!r})"
            )
        if embedder is not None and embedder.name != m["embedding_model"]:
            raise AsymmetryError(
                f"router {path} was trained on embeddings of {m['embedding_model']!r} but the embedder passed to "
                f"Router.load is {embedder.name!r}: pass an Embedder of {m['embedding_model']!r} or retrain the router"
            )
        fallback = fallback or saved_fallback
        if expert_names is not None:
            expert_names = list(expert_names)
            missing = [n for n in [*labels, fallback] if n not in expert_names]
            if missing:
                raise AsymmetryError(
                    f"router {path} was trained for experts {labels} (fallback {fallback!r}) but the available experts "
                    f"are {expert_names}; missing: {missing}. Retrain it for these experts with asymmetry router train "
                    "(map datasets in router/mapping.toml or add labelled questions with --data FILE.jsonl)"
                )
            unrouted = [n for n in expert_names if n not in labels and n != fallback]
            if unrouted:
                log.warning("router %s never routes to experts %s: retrain it to include them", path, unrouted)
        return cls(
            labels=labels,
            layers=layers,
            temperature=float(m["temperature"]),
            threshold=float(m["threshold"] if threshold is None else threshold),
            fallback=fallback,
            embedding_model=m["embedding_model"],
            dim=int(m["dim"]),
            manifest=m,
            path=path,
            embedder=embedder,
        )


@dataclass
class RouterTrainSettings:
    """How :func:`train` fits a head; ``lr`` None: the head's default learning rate (``router.config.HEAD_LR``)."""

    head: str = DEFAULT_HEAD
    hidden: int = 128
    epochs: int = 60
    batch_size: int = 256
    lr: float | None = None
    weight_decay: float = 1e-4
    seed: int = 0

    def __post_init__(self):
        if self.head not in HEADS:
            raise AsymmetryError(f"router head {self.head!r} is unknown: use one of {', '.join(HEADS)}")
        for name in ("hidden", "epochs", "batch_size"):
            positive_int(f"router.{name}", getattr(self, name))
        positive_int("seed", self.seed, "use a non-negative integer", minimum=0)
        if self.lr is None:
            self.lr = HEAD_LR[self.head]
        self.lr = finite_number("lr", self.lr, "use a positive learning rate, e.g. 0.003", above=0.0)
        self.weight_decay = finite_number("weight_decay", self.weight_decay, "use a decay >= 0, e.g. 1e-4",
                                          minimum=0.0)

    @classmethod
    def from_config(cls, cfg) -> RouterTrainSettings:
        """The settings a :class:`~asymmetry.router.config.RouterConfig` asks for."""
        return cls(head=cfg.head, hidden=cfg.hidden, epochs=cfg.epochs)


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """The temperature T minimising the NLL of softmax(logits / T) on a calibration split, (N, L), (N,)."""
    import torch  # heavy: only for training

    z = torch.as_tensor(logits, dtype=torch.float64)  # (N, L)
    t = torch.as_tensor(y, dtype=torch.long)  # (N,)
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(z / log_t.exp(), t)
        loss.backward()
        return loss

    opt.step(closure)
    return float(log_t.detach().exp().clamp(0.05, 20.0))


def _fit(x_train, y_train, labels, index, settings: RouterTrainSettings, progress: bool):
    import torch  # heavy: only for training

    torch.manual_seed(settings.seed)
    x = torch.as_tensor(np.asarray(x_train, dtype=np.float32))  # (N, D)
    y = torch.as_tensor([index[v] for v in y_train], dtype=torch.long)  # (N,)
    n, d = x.shape
    counts = torch.bincount(y, minlength=len(labels)).float()  # (L,)
    class_weight = counts.sum() / (len(labels) * counts)  # (L,)
    if settings.head == "logistic":
        net = torch.nn.Sequential(torch.nn.Linear(d, len(labels)))
    else:
        net = torch.nn.Sequential(
            torch.nn.Linear(d, settings.hidden), torch.nn.ReLU(), torch.nn.Dropout(0.1),
            torch.nn.Linear(settings.hidden, len(labels)),
        )
    opt = torch.optim.AdamW(net.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=settings.epochs)
    gen = torch.Generator().manual_seed(settings.seed)
    net.train()
    for _ in trange(settings.epochs, desc="training router", disable=not progress):
        for idx in torch.randperm(n, generator=gen).split(settings.batch_size):
            loss = torch.nn.functional.cross_entropy(net(x[idx]), y[idx], weight=class_weight)  # x[idx]: (B, D)
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
    return net


def train(
    x_train: np.ndarray,
    y_train: list[str],
    x_calib: np.ndarray,
    y_calib: list[str],
    *,
    labels: list[str] | None = None,
    fallback: str = "general",
    threshold: float = 0.5,
    embedding_model: str | None = None,
    settings: RouterTrainSettings | None = None,
    manifest: dict[str, Any] | None = None,
    progress: bool = False,
) -> Router:
    """Fit the head on (N, D) embeddings with class-balanced cross-entropy, then temperature-scale on calibration."""
    import torch  # heavy: only for training

    settings = settings or RouterTrainSettings()
    labels = labels or sorted(set(y_train))
    index = {name: i for i, name in enumerate(labels)}
    unknown = sorted(set(y_train) - set(index))
    if unknown:
        raise AsymmetryError(f"training labels {unknown} are not in the router labels {labels}")
    missing = [name for name in labels if name not in set(y_train)]
    if missing:
        raise AsymmetryError(f"no training questions for experts {missing}: map a dataset to them or add --data lines")
    if not len(x_calib):
        raise AsymmetryError("the calibration split is empty: add questions (user data: \"split\": \"calibration\")")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: one thread is ~10x faster than several on a busy CPU
    try:
        net = _fit(x_train, y_train, labels, index, settings, progress)
    finally:
        torch.set_num_threads(threads)
    net.eval()
    n, d = len(y_train), int(np.shape(x_train)[1])
    layers = [
        (m.weight.detach().numpy().copy(), m.bias.detach().numpy().copy()) for m in net if isinstance(m, torch.nn.Linear)
    ]
    router = Router(labels=list(labels), layers=layers, temperature=1.0, threshold=threshold, fallback=fallback,
                    embedding_model=embedding_model_name(embedding_model), dim=int(d))
    y_cal = np.array([index[v] for v in y_calib])
    router.temperature = fit_temperature(router.logits(x_calib), y_cal)
    router.manifest = {
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "train": {**asdict(settings), "n_train": int(n), "n_calibration": len(y_calib)},
        **(manifest or {}),
    }
    return router
