"""Where the hub and its cache are, read when asked (not when huggingface_hub was imported).

huggingface_hub reads ``HF_ENDPOINT``, ``HF_HUB_CACHE``/``HF_HOME`` and ``HF_HUB_OFFLINE`` once,
when it is imported (``huggingface_hub.constants``). This package passes the endpoint and the
cache folder explicitly to every call instead, read from the environment at call time: a test
(or a long-lived service) that sets ``HF_ENDPOINT`` later is still obeyed, and the local test hub
(``testing_hub``) is reached without re-importing anything. Offline mode is the exception:
huggingface_hub checks its own ``constants.HF_HUB_OFFLINE`` inside every request, so a download
refuses to start while either that or the environment says offline (one clear line, not a
stack of retries).
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_ENDPOINT = "https://huggingface.co"
TRUE = ("1", "true", "yes", "on")


def endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def cache_dir() -> Path:
    """huggingface_hub's cache folder, as its ``constants`` would compute it now."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg).expanduser() / "huggingface" / "hub"


def offline() -> bool:
    """``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) in the environment, or huggingface_hub's
    own flag (set when it was imported)."""
    env = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    if env.strip().lower() in TRUE:
        return True
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except ImportError:  # pragma: no cover - a dependency of the backend
        return False


def page(repo_id: str, base: str | None = None) -> str:
    """The repository's page on the hub (where a gated licence is accepted)."""
    return f"{(base or endpoint()).rstrip('/')}/{repo_id}"
