"""Jobs on a Ray cluster (``stabledreamer serve --ray``; the optional ``farm`` extra).

The service stays the single front door; each job's worker runs in a Ray actor that asks for a
GPU and runs the same code as a local worker (``worker.worker_main``), talking to the service
over an authenticated TCP connection instead of a pipe. The pool sees it as one more process.

``settings`` (no Ray), ``relay`` (the service's listener and the byte relay; no Ray), ``actor``
(the worker's side; no Ray), ``launcher`` (the only module that imports Ray). See docs/farm.md.
"""

from __future__ import annotations

from .settings import FarmConfig

INSTALL_HINT = "pip install '.[farm]'"


def require_ray() -> None:
    """Raise a one-line ``ConfigError`` when Ray is not installed (checked before anything
    starts, without importing it)."""
    import importlib.util

    from ...errors import ConfigError

    if importlib.util.find_spec("ray") is None:
        raise ConfigError(f"serve --ray needs Ray, which is not installed: {INSTALL_HINT}")


def start_launcher(cfg: FarmConfig):
    """Join (or start) the Ray cluster: the pool's ``launcher`` (``launcher.RayLauncher``)."""
    require_ray()
    from .launcher import RayLauncher

    return RayLauncher(cfg)


__all__ = ["FarmConfig", "INSTALL_HINT", "require_ray", "start_launcher"]
