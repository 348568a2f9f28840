"""The run folder every recipe writes (``generate``, ``reconstruct``, ``demo``): opening it (fresh,
overwritten or resumed, with the config saved), reading a saved config back, and the turntable
picture. See docs/architecture.md for its layout.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..atomic import write_json
from ..cameras import orbit_cameras
from ..config import RunConfig, from_dict, to_dict
from ..device import resolve_device
from ..errors import InputError
from ..render import render
from .debug_images import image_grid, save_png

PROCEDURAL_DEMO = "procedural:demo"
"""``RunConfig.target`` of the built-in demo object (``stabledreamer demo``)."""


class RunDirError(InputError):
    """The output folder cannot be used as asked; the message says what to pass."""


def prepare_run_dir(out: Path, overwrite: bool, resume: bool) -> None:
    """Refuse to clobber an existing run unless asked; ``overwrite`` empties a run folder."""
    if resume:
        if not (out / "config.json").is_file():
            raise RunDirError(f"{out}: not a run folder (no config.json); nothing to resume")
        return
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise RunDirError(
                f"{out} already exists; pass --overwrite to replace it or --resume to continue it"
            )
        if not (out / "config.json").is_file():
            raise RunDirError(
                f"{out} is not empty and is not a run folder (no config.json); "
                "choose another --out, --overwrite only replaces run folders"
            )
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def load_run_config(run_dir: Path) -> RunConfig:
    return from_dict(RunConfig, json.loads((run_dir / "config.json").read_text()))


def open_run(
    cfg: RunConfig,
    out: Path,
    *,
    overwrite: bool,
    resume: bool,
    device: str | None,
    adjust: Callable[[RunConfig], None] | None = None,
    read_inputs: Callable[[RunConfig], Any] | None = None,
) -> tuple[RunConfig, Any]:
    """Open the run folder ``out`` for ``cfg`` (fresh or overwritten) or resume the run there.

    A fresh run is checked first (``adjust`` then ``validate``, the device, ``read_inputs``)
    so a bad setting or input leaves nothing behind; then the folder is prepared and the config
    saved. A resumed run reads its saved config instead. ``device`` (when given) replaces the
    config's and ``adjust`` applies again on resume: a run may continue elsewhere. Returns the
    config the run uses and what ``read_inputs`` returned (None on resume)."""
    inputs = None
    if not resume:
        cfg.device = device or cfg.device
        if adjust:
            adjust(cfg)
        cfg.validate()
        resolve_device(cfg.device)  # a missing GPU is refused before anything is written
        inputs = read_inputs(cfg) if read_inputs else None
    prepare_run_dir(out, overwrite, resume)
    if resume:
        cfg = load_run_config(out)
        cfg.device = device or cfg.device
        if adjust:
            adjust(cfg)
    else:
        write_json(out / "config.json", to_dict(cfg))
    return cfg, inputs


def camera_mid(r: tuple[float, float]) -> float:
    """The middle of a (low, high) camera setting: the fixed cameras' distance and fov."""
    return 0.5 * (r[0] + r[1])


@torch.no_grad()
def save_turntable(params: dict[str, Tensor], cfg: RunConfig, run_dir: Path) -> None:
    """turntable.png: 8 views on a ring at elevation 20 deg, azimuth 0, 45, ... on white."""
    res = cfg.eval_resolution
    turn = orbit_cameras(
        torch.arange(8) * 45.0,
        20.0,
        camera_mid(cfg.camera.distance),
        camera_mid(cfg.camera.fov_y_deg),
        res,
        res,
    )
    spin = render(params, turn, torch.ones(len(turn), 3)).rgb
    save_png(run_dir / "turntable.png", image_grid(spin, columns=4))
