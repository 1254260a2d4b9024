"""[router] section of the config."""

from __future__ import annotations

from dataclasses import dataclass, field

from asymmetry.errors import ConfigError

HEADS = ("logistic", "mlp")  # the classifier heads (router.model trains them)
DEFAULT_HEAD = "mlp"  # one hidden ReLU layer
HEAD_LR = {"logistic": 0.01, "mlp": 0.003}  # AdamW learning rate of each head


@dataclass
class RouterConfig:
    threshold: float = 0.5  # below this top probability the fallback expert answers
    fallback: str = "general"
    path: str | None = None  # None: <ASYMMETRY_HOME>/router/router.json if trained there, else the committed router
    mapping: str | None = None  # dataset -> expert TOML; None: the shipped router/mapping.toml
    data: list[str] = field(default_factory=list)  # extra labelled JSONL files ({"question", "expert"[, "split"]})
    head: str = DEFAULT_HEAD  # "logistic" is a single linear layer
    hidden: int = 128  # hidden units of the "mlp" head
    epochs: int = 60
    max_train_per_source: int = 1000
    max_calibration_per_source: int = 100
    max_heldout_per_source: int = 150

    def __post_init__(self):
        if isinstance(self.threshold, bool) or not isinstance(self.threshold, (int, float)) or not (
            0.0 <= self.threshold <= 1.0
        ):
            raise ConfigError("router.threshold", self.threshold, "use a probability in [0, 1] such as 0.5")
        if not isinstance(self.fallback, str) or not self.fallback:
            raise ConfigError("router.fallback", self.fallback, "name the fallback expert, e.g. \"general\"")
        if self.head not in HEADS:
            raise ConfigError("router.head", self.head, f"use one of {', '.join(HEADS)}")
        if not isinstance(self.data, list) or not all(isinstance(p, str) for p in self.data):
            raise ConfigError("router.data", self.data, "use a list of JSONL file paths")
        for name in ("hidden", "epochs", "max_train_per_source", "max_calibration_per_source",
                     "max_heldout_per_source"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"router.{name}", value, "use a positive integer")
        self.threshold = float(self.threshold)
