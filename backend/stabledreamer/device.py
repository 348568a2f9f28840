"""Which torch device a run trains on: ``auto`` (CUDA when present, else the CPU), ``cpu``,
``cuda`` or ``cuda:N``. One place turns the config value into a ``torch.device`` with an error
that says what to do when the asked-for device is not there. Also the process's resident-memory
high-water mark a run reports (``peak_rss_mb``), reset per run (``reset_peak_rss``)."""

from __future__ import annotations

import torch

from .errors import StableDreamerError

DEVICES = ("auto", "cpu", "cuda")


class DeviceError(StableDreamerError):
    """The configured device cannot be used here; the message says what to pass instead."""


def check_device_name(name: str) -> None:
    """Refuse a malformed name early (before anything is written)."""
    base, _, index = str(name).partition(":")
    if base not in DEVICES or (index and (base != "cuda" or not index.isdigit())):
        raise DeviceError(f"device {name!r}: choose auto, cpu, cuda or cuda:N")


def resolve_device(name: str = "auto") -> torch.device:
    """The ``torch.device`` for ``name``; a CUDA device that is not available is an error."""
    check_device_name(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = (
                f"this torch ({torch.__version__}) is a CPU-only build"
                if torch.version.cuda is None
                else "torch sees no CUDA GPU (driver missing or CUDA_VISIBLE_DEVICES empty)"
            )
            raise DeviceError(
                f"device {name!r} was asked for but CUDA is not available: {why}. Pass "
                "--device cpu (slow; tiny models only) or --device auto, or install a CUDA "
                "build of torch on a machine with an NVIDIA GPU; `stabledreamer doctor` checks "
                "the setup"
            )
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise DeviceError(
                f"device {name!r}: only {count} CUDA device(s) here (cuda:0..cuda:{count - 1})"
            )
    return dev


def reset_peak_rss() -> bool:
    """Start this process's resident-memory high-water mark afresh, so a long-lived worker's
    next job reports its own peak, not the worker's (Linux: writing 5 to /proc/self/clear_refs
    sets VmHWM to the current resident size, the models already loaded included). False where
    the system cannot: the peak then covers the process's whole life."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    """This process's resident-memory high-water mark in MiB (VmHWM, since ``reset_peak_rss``
    where it worked; otherwise ``ru_maxrss``: the process's whole life)."""
    import re
    import resource
    import sys

    try:
        with open("/proc/self/status") as f:
            found = re.search(r"^VmHWM:\s+(\d+) kB", f.read(), re.M)
        if found:
            return int(found.group(1)) / 1024
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024  # bytes on macOS, KiB on Linux
