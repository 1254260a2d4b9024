"""The switch router: routes each question, from its shared query embedding, to one expert with a calibrated
confidence, falling back to the ``general`` expert below a threshold, with top-2 for the mixture mode.

    from asymmetry.router import Router
    router = Router.load(expert_names=registry.names())
    route = router.route(query_embedding)  # Route(expert, confidence, probabilities, top2)
"""

from __future__ import annotations

from asymmetry.router.config import RouterConfig
from asymmetry.router.model import DEFAULT_ROUTER_FILE, Route, Router, default_router_path, home_router_path

__all__ = ["DEFAULT_ROUTER_FILE", "Route", "Router", "RouterConfig", "default_router_path", "home_router_path"]
