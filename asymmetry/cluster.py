"""Ray, the engine every ``--ray`` command runs on: one place that imports it, connects and says how to install it.

``connect()`` joins the cluster named by ``RAY_ADDRESS`` (``ray://host:10001`` or ``host:6379``) when it is set, and
otherwise starts a private local Ray on this machine (``address="local"``: never a cluster some other process started
here). Ray is an optional extra: without it, ``--ray`` fails with one line naming the install command.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from asymmetry.errors import AsymmetryError

log = logging.getLogger(__name__)

INSTALL = "pip install -e '.[ray]'"  # the optional extra (pyproject.toml)


def require_ray() -> Any:
    """The ``ray`` module, or an error saying how to install it."""
    try:
        import ray
    except ImportError:
        raise AsymmetryError(
            f"--ray needs Ray, which is not installed: {INSTALL} (or pip install 'ray[data,serve]'), "
            "then rerun the same command"
        ) from None
    return ray


def connect(num_cpus: int | None = None, *, object_store_mb: int | None = None) -> Any:
    """Connect to ``$RAY_ADDRESS`` or start a local Ray (``num_cpus``: its CPUs, default all); returns ``ray``.

    A connection already open in this process is reused. Ray's own banner and worker logs stay off the terminal
    (``log_to_driver=False``); its dashboard is not started.
    """
    ray = require_ray()
    if ray.is_initialized():
        return ray
    address = os.environ.get("RAY_ADDRESS") or "local"
    kwargs: dict[str, Any] = {"address": address, "log_to_driver": False, "include_dashboard": False,
                              "configure_logging": False}
    if address == "local":
        if num_cpus is not None:
            kwargs["num_cpus"] = num_cpus
        if object_store_mb is not None:
            kwargs["object_store_memory"] = object_store_mb * 1024 * 1024
    else:
        kwargs.pop("include_dashboard")
    if logging.getLogger().getEffectiveLevel() > logging.INFO:  # a quiet terminal: Ray's own lines only with --verbose
        logging.getLogger("ray").setLevel(logging.ERROR)
    try:
        ray.init(**kwargs)
    except ConnectionError as exc:
        raise AsymmetryError(
            f"cannot reach the Ray cluster at RAY_ADDRESS={address} ({exc}): start it (ray start --head) or unset "
            "RAY_ADDRESS to run on a local Ray"
        ) from None
    res = ray.cluster_resources()
    log.info("Ray: %s, %d CPUs, %d GPUs", "local" if address == "local" else address, int(res.get("CPU", 0)),
             int(res.get("GPU", 0)))
    return ray


def workers(requested: int | None) -> int:
    """How many workers to start: ``requested``, or as many as the cluster's CPUs (GPUs when it has any) allow."""
    ray = require_ray()
    if requested is not None:
        if requested < 1:
            raise AsymmetryError(f"invalid --ray-workers {requested}: use a positive integer")
        return requested
    res = ray.cluster_resources()
    gpus = int(res.get("GPU", 0))
    if gpus:
        return gpus
    return max(1, int(res.get("CPU", 1)))


def worker_options() -> dict[str, Any]:
    """Ray actor options for one model-holding worker: a GPU each when the cluster has GPUs, else one CPU."""
    ray = require_ray()
    if int(ray.cluster_resources().get("GPU", 0)):
        return {"num_gpus": 1, "num_cpus": 1}
    return {"num_cpus": 1}


def get(ref: Any, what: str) -> Any:
    """A Ray worker's result; its failure as one line (``what``: the job, e.g. "index build", whose finished parts
    are kept so the same command resumes). Our own errors raised in a worker come back as they were."""
    ray = require_ray()
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        cause = exc.cause if getattr(exc, "cause", None) is not None else exc
        if isinstance(cause, AsymmetryError):
            raise AsymmetryError(str(cause)) from None
        raise AsymmetryError(f"a Ray worker of the {what} failed ({type(cause).__name__}: "
                             f"{str(cause).splitlines()[0] if str(cause) else ''}): fix the cause and rerun the same "
                             "command; finished work is kept") from None
    except ray.exceptions.RayActorError as exc:
        raise AsymmetryError(f"a Ray worker of the {what} died ({str(exc).splitlines()[0]}): rerun the same command "
                             "(finished work is kept); if it dies again, give the workers more memory") from None
