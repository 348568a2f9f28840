"""Checkpoints: everything needed to continue a run exactly, written atomically."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from ..atomic import atomic_path
from ..errors import InputError

CHECKPOINT_NAME = "last.pt"
FORMAT_VERSION = 1


def checkpoint_path(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / "checkpoints" / CHECKPOINT_NAME


def save_checkpoint(run_dir: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write ``state`` (tensors, dicts, lists, numbers, strings) to the run's checkpoint."""
    path = checkpoint_path(run_dir)
    with atomic_path(path) as tmp:
        torch.save({"format_version": FORMAT_VERSION, **state}, tmp)
    return path


def load_checkpoint(run_dir: str | os.PathLike) -> dict[str, Any]:
    path = checkpoint_path(run_dir)
    if not path.is_file():
        raise InputError(
            f"{run_dir}: no checkpoint to resume from ({path} is missing); start a new run instead"
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("format_version") != FORMAT_VERSION:
        raise InputError(
            f"{path}: checkpoint format {state.get('format_version')} is not supported"
        )
    return state
