"""Checkpoints: everything needed to continue a run exactly, written atomically, verified when
read, and the previous good one kept.

``checkpoints/last.pt`` is the newest, ``previous.pt`` the one before; each has a sidecar
(``last.json``) with its size and SHA-256. A save writes the new file completely first (so a
full disk or a crash while writing leaves both old files as they were), then moves ``last`` to
``previous`` and the new file to ``last``. A load takes the newest file that matches its sidecar
and that torch can read (a checkpoint without a sidecar, from an older release or a crash between
the two writes, counts when torch can read it); truncated, empty or garbage bytes (a power loss,
a bad disk) fall back to the previous checkpoint, and only when none is readable does the run
fail, saying what was wrong with each.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch

from ..atomic import atomic_path, write_json
from ..errors import InputError, StableDreamerError

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "last.pt"
PREVIOUS_NAME = "previous.pt"
FORMAT_VERSION = 1


class CheckpointError(StableDreamerError):
    """No checkpoint of a run can be read; the message says what was wrong with each."""


def checkpoint_path(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / "checkpoints" / CHECKPOINT_NAME


def checkpoint_paths(run_dir: str | os.PathLike) -> list[Path]:
    """The run's checkpoint files, newest first (those that exist)."""
    folder = Path(run_dir) / "checkpoints"
    return [p for p in (folder / CHECKPOINT_NAME, folder / PREVIOUS_NAME) if p.is_file()]


def has_checkpoint(run_dir: str | os.PathLike) -> bool:
    return bool(checkpoint_paths(run_dir))


def _sidecar(path: Path) -> Path:
    return path.with_suffix(".json")


class _Hashing:
    """A binary file that hashes what is written to it."""

    def __init__(self, f) -> None:
        self.f, self.sha, self.size = f, hashlib.sha256(), 0

    def write(self, data) -> int:
        self.sha.update(data)
        self.size += len(memoryview(data).cast("B"))
        return self.f.write(data)

    def flush(self) -> None:
        self.f.flush()


def _digest(path: Path) -> tuple[int, str]:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
            size += len(block)
    return size, h.hexdigest()


def save_checkpoint(run_dir: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write ``state`` (tensors, dicts, lists, numbers, strings) as the run's newest checkpoint;
    the one it replaces becomes ``previous.pt``."""
    path = checkpoint_path(run_dir)
    previous = path.with_name(PREVIOUS_NAME)
    staged = path.with_name(".next.pt")
    with atomic_path(staged, needed=_nbytes(state)) as tmp, open(tmp, "wb") as f:
        # A Python file, closed even when the write fails: torch's own writer keeps its handle
        # (and a full disk's space) until garbage collection. Hashed as it is written.
        out = _Hashing(f)
        torch.save({"format_version": FORMAT_VERSION, **state}, out)
    size, sha = out.size, out.sha.hexdigest()
    if path.is_file():
        # Killed at any point of the rotation, every checkpoint left has its own sidecar or
        # none (then torch's reader checks it): the older sidecar goes before its file is
        # replaced, never after (a SIGKILL in between left previous.pt with a stale sidecar,
        # unreadable as corrupt, and no last.pt: nothing to resume from).
        _sidecar(previous).unlink(missing_ok=True)
        os.replace(path, previous)
        if _sidecar(path).is_file():
            os.replace(_sidecar(path), _sidecar(previous))
    os.replace(staged, path)
    write_json(_sidecar(path), {"size": size, "sha256": sha})
    return path


def _nbytes(obj: Any) -> int:
    """Bytes of the tensors in ``obj`` (what a checkpoint of it needs on disk, about)."""
    if isinstance(obj, torch.Tensor):
        return obj.nelement() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_nbytes(v) for v in obj.values())
    if isinstance(obj, list | tuple):
        return sum(_nbytes(v) for v in obj)
    return 0


def _read(path: Path) -> dict[str, Any]:
    """One checkpoint file, verified; raises ValueError saying what is wrong."""
    sidecar = _sidecar(path)
    if sidecar.is_file():
        try:
            want = json.loads(sidecar.read_text())
            want_size, want_sha = int(want["size"]), str(want["sha256"])
        except (ValueError, KeyError, TypeError, OSError) as e:
            raise ValueError(f"its sidecar {sidecar.name} is unreadable ({e})") from None
        size, sha = _digest(path)
        if size != want_size:
            raise ValueError(f"{size} bytes, {want_size} were written (truncated or overwritten)")
        if sha != want_sha:
            raise ValueError("its bytes do not match the SHA-256 written with it (corrupt)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many kinds on bad bytes: any of them means unreadable
        raise ValueError(f"torch cannot read it ({type(e).__name__}: {str(e)[:200]})") from None
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        got = state.get("format_version") if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"checkpoint format {got!r} is not supported")
    return state


def load_checkpoint(run_dir: str | os.PathLike) -> dict[str, Any]:
    """The newest readable checkpoint of the run (see the module doc)."""
    paths = checkpoint_paths(run_dir)
    if not paths:
        raise InputError(
            f"{run_dir}: no checkpoint to resume from ({checkpoint_path(run_dir)} is missing); "
            "start a new run instead"
        )
    problems = []
    for path in paths:
        try:
            state = _read(path)
        except ValueError as e:
            log.warning("checkpoint %s is unusable: %s", path, e)
            problems.append(f"{path.name}: {e}")
            continue
        if problems:
            log.warning("resuming from the older checkpoint %s", path)
        return state
    raise CheckpointError(
        f"{run_dir}: no checkpoint can be read ({'; '.join(problems)}). "
        "Delete the run folder (or the job) to start again."
    )
