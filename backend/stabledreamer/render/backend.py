"""Which rasteriser a run renders with, chosen once by the caller and passed to ``render()``.

- ``gsplat``: gsplat 1.5.3's CUDA kernels (CUDA tensors; compiled once, see ``gsplat_kernels``).
- ``native``: the project's C++ CPU kernel (``raster_native``; CPU tensors, float32).
- ``torch``: the project's pure-torch sparse rasteriser (``projection`` + ``raster_torch``): no
  compilation; takes CPU or CUDA tensors (with CUDA tensors the projection runs on the GPU and
  the compositing on the CPU, the gradients going back to the GPU); slower than either kernel.
- ``auto``: on CUDA gsplat when its kernels are ready, else ``torch`` with one notice; on the CPU
  ``native`` when it built, else ``torch`` with one notice.

``resolve_backend`` turns a request into one of the three concrete paths; the availability of
each kernel can be injected (tests simulate a machine without gsplat's kernels on the CPU). The
environment variable ``STABLEDREAMER_RASTER`` is read in one place (``backend_from_env``), by the
run at its start, never by ``render()``.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from typing import Literal

import torch

from ..errors import ConfigError, StableDreamerError

RenderBackend = Literal["auto", "gsplat", "native", "torch"]
BACKENDS: tuple[str, ...] = ("auto", "gsplat", "native", "torch")
CONCRETE: tuple[str, ...] = ("gsplat", "native", "torch")
RASTER_ENV = "STABLEDREAMER_RASTER"
"""Overrides the run's ``render_backend`` when set (auto | gsplat | native | torch)."""

_notices: set[str] = set()


class RenderBackendError(StableDreamerError):
    """The asked-for rasteriser cannot run here; the message says what to do instead."""


def check_backend_name(name: str) -> str:
    name = str(name).strip().lower()
    if name not in BACKENDS:
        raise ConfigError(f"render backend {name!r}: choose one of {', '.join(BACKENDS)}")
    return name


def backend_from_env(configured: str = "auto") -> str:
    """``configured`` unless ``STABLEDREAMER_RASTER`` names another backend (read once per run)."""
    env = os.environ.get(RASTER_ENV, "").strip().lower()
    if not env:
        return check_backend_name(configured)
    if env not in BACKENDS:
        raise ConfigError(f"{RASTER_ENV}={env!r}: choose one of {', '.join(BACKENDS)} or unset it")
    return env


def _gsplat_ready() -> tuple[bool, str]:
    from . import gsplat_kernels

    st = gsplat_kernels.status()
    return st.ready, st.why


def _native_ready() -> tuple[bool, str]:
    from . import raster_native

    return raster_native.available(), str(raster_native.build_error() or "")


def notice_once(key: str, text: str, notify: Callable[[str], None] | None = None) -> None:
    """Say ``text`` once per process (a RuntimeWarning unless ``notify`` is given)."""
    if key in _notices:
        return
    _notices.add(key)
    if notify is not None:
        notify(text)
    else:
        warnings.warn(text, RuntimeWarning, stacklevel=3)


def resolve_backend(
    requested: str,
    device: torch.device | str,
    dtype: torch.dtype = torch.float32,
    *,
    gsplat_ready: Callable[[], tuple[bool, str]] | None = None,
    native_ready: Callable[[], tuple[bool, str]] | None = None,
    notify: Callable[[str], None] | None = None,
) -> str:
    """The concrete backend (gsplat | native | torch) for tensors on ``device``.

    ``gsplat_ready``/``native_ready`` return (ready, why not); by default they ask
    ``gsplat_kernels.status()`` (no build) and ``raster_native``. A forced backend that cannot
    run is an error with the fix; ``auto`` falls back to ``torch`` with one notice."""
    requested = check_backend_name(requested)
    device = torch.device(device)
    gsplat_ready = gsplat_ready or _gsplat_ready
    native_ready = native_ready or _native_ready
    if device.type == "cuda":
        if requested == "native":
            raise RenderBackendError(
                "render backend 'native' is the CPU kernel: with a CUDA device use gsplat, torch "
                "or auto"
            )
        if requested == "torch":
            return "torch"
        ok, why = gsplat_ready()
        if ok:
            return "gsplat"
        if requested == "gsplat":
            raise RenderBackendError(
                f"render backend 'gsplat' was asked for but its CUDA kernels are not ready: {why}. "
                "`stabledreamer doctor` builds them (needs nvcc: the CUDA toolkit matching "
                f"torch's CUDA {torch.version.cuda}, with CUDA_HOME set); or use the backend "
                "'auto' / 'torch' (the pure-torch rasteriser on the GPU, no compilation, slower)"
            )
        notice_once(
            "gsplat-missing",
            f"gsplat's CUDA kernels are not available ({why}): rendering with the pure-torch "
            "rasteriser instead (no compilation; it composites on the CPU, so each step is slower "
            "than with gsplat's kernels). "
            "`stabledreamer doctor` says how to build them.",
            notify,
        )
        return "torch"
    if requested == "gsplat":
        raise RenderBackendError(
            "render backend 'gsplat' needs a CUDA device; on the CPU use native, torch or auto"
        )
    if requested == "torch":
        return "torch"
    ok, why = native_ready()
    if requested == "native":
        if not ok:
            raise RenderBackendError(
                f"render backend 'native' was asked for but the native rasteriser did not build: "
                f"{why}"
            )
        if dtype != torch.float32:
            raise RenderBackendError(f"the native rasteriser is float32 only; got {dtype}")
        return "native"
    if dtype != torch.float32:
        return "torch"
    if ok:
        return "native"
    notice_once(
        "native-missing",
        f"native CPU rasteriser unavailable, using the slower pure-torch path: {why}",
        notify,
    )
    return "torch"
