"""The switch router: routes each question, from its shared query embedding, to one expert with a calibrated
confidence, falling back to the ``general`` expert below a threshold, with top-2 for the mixture mode.

    from asymmetry.router import Router
    router = Router.load(path, expert_names=registry.names(), embedder=embedder)
    route = router.route(query_embedding)  # Route(expert, confidence, probabilities, top2)

Exports the router (:class:`Router`, :class:`Route`, where it is saved), its config (:class:`RouterConfig`,
:data:`HEADS`), training (:class:`RouterTrainSettings`, :func:`train`, :func:`train_router`) and evaluation
(:func:`evaluate_router`, :class:`RouterReport`, :data:`PRIMARY_METRIC`). Importing it loads neither torch nor the
embedding model.
"""

from __future__ import annotations

from asymmetry.router.config import HEADS, RouterConfig
from asymmetry.router.metrics import PRIMARY_METRIC, RouterReport
from asymmetry.router.model import (
    DEFAULT_ROUTER_FILE,
    Route,
    Router,
    RouterTrainSettings,
    default_router_path,
    home_router_path,
    train,
)
from asymmetry.router.pipeline import evaluate_router, train_router

__all__ = [
    "DEFAULT_ROUTER_FILE",
    "HEADS",
    "PRIMARY_METRIC",
    "Route",
    "Router",
    "RouterConfig",
    "RouterReport",
    "RouterTrainSettings",
    "default_router_path",
    "evaluate_router",
    "home_router_path",
    "train",
    "train_router",
]
