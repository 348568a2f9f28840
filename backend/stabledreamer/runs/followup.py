"""Follow-up runs: *refine* or *continue* a finished text-to-3D run, as a new run that remembers
its parent (``generate --refine RUN_DIR`` / ``--continue RUN_DIR``, and the service's ``submit``
with ``parent`` and ``mode``: one code path for both).

- **refine** reruns the parent's last stage (the detail stage) from the parent's final Gaussians
  with an edited prompt and negative prompt: the geometry is kept (positions frozen: the stage's
  position learning rate is 0; no densification or pruning) while colours, opacities, sizes and
  rotations are redone from fresh Adam moments, on the stage's own noise schedule. The earlier
  stages are not run.
- **continue** adds N steps to the parent's last stage, from its final Gaussians *and* Adam
  moments, held at that stage's final noise level (t_max constant at the value the stage ended
  on) and final position learning rate, without densification.

Both write a fresh run folder whose first checkpoint (stage 0, step 0) holds the parent's final
state, then train it as a resumed run: a follow-up stopped midway resumes like any other run.
``followup.json`` in the folder names the mode and the parent; ``metrics.json`` repeats them.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..atomic import write_json
from ..config import RunConfig, apply_overrides, from_dict, to_dict
from ..device import resolve_device
from ..errors import InputError
from ..optim.sds import t_max_at
from .checkpoint import load_checkpoint, save_checkpoint
from .folder import load_run_config, prepare_run_dir
from .generate import check_prompt, run_generation
from .trainer import make_optimizers

MODES = ("refine", "continue")
FOLLOWUP_FILE = "followup.json"


class FollowUpError(InputError):
    """The parent run cannot be refined or continued; the message says why and what to do."""

    code = "unknown_parent"


@dataclass
class FollowUp:
    mode: str
    """``refine`` or ``continue``."""
    parent: Path
    """The parent's run folder (its ``config.json`` and final checkpoint)."""
    prompt: str = ""
    """refine: the edited prompt ("" = the parent's). continue: ignored (the parent's)."""
    negative: str | None = None
    """refine: the edited negative prompt (None = the parent's). continue: ignored."""
    steps: int = 0
    """continue: steps to add (at least 1). refine: steps of the rerun stage (0 = the parent's)."""
    seed: int | None = None
    """None: the parent's seed."""
    parent_name: str = ""
    """How the parent is named to the user (the service: its job id); default: the folder."""

    def check(self) -> None:
        if self.mode not in MODES:
            raise FollowUpError(f"mode {self.mode!r}: use refine or continue", code="unsupported")
        if self.mode == "continue" and self.steps < 1:
            raise FollowUpError(
                "continue needs the number of steps to add (--steps N, at least 1)",
                code="bad_field",
            )
        if self.steps < 0:
            raise FollowUpError(f"steps {self.steps}: must be at least 1", code="bad_field")


def read_parent(parent: str | os.PathLike) -> tuple[RunConfig, dict[str, Any]]:
    """The parent run's config and its final checkpoint state, or why they cannot be used."""
    parent = Path(parent)
    if not (parent / "config.json").is_file():
        raise FollowUpError(f"{parent}: not a run folder (no config.json); give a finished run")
    cfg = load_run_config(parent)
    if not cfg.prompt:
        raise FollowUpError(
            f"{parent} is a reconstruction, not a text-to-3D run: only text runs can be refined "
            "or continued",
            code="unsupported",
        )
    state = load_checkpoint(parent)  # verified; a damaged last.pt falls back to previous.pt
    last = len(cfg.stages) - 1
    finished = state["stage_index"] > last or (
        state["stage_index"] == last and state["step"] >= cfg.stages[last].steps
    )
    if not finished:
        stage = cfg.stages[min(state["stage_index"], last)].name
        raise FollowUpError(
            f"{parent} is not finished (it stopped in stage {stage!r} at step {state['step']}): "
            f"finish it first (generate --resume {parent})",
            code="parent_not_done",
        )
    return cfg, state


def followup_config(
    parent: RunConfig,
    f: FollowUp,
    *,
    overrides: dict[str, Any] | None = None,
    forbidden: dict[str, str] | None = None,
    fixed: dict[str, Any] | None = None,
) -> RunConfig:
    """The follow-up's config: the parent's, reduced to its last stage as the mode says, then
    the caller's dotted ``overrides`` (``forbidden`` keys refused) and ``fixed`` settings (the
    service's models), every value checked as ``presets.resolve`` checks them."""
    f.check()
    cfg = from_dict(RunConfig, to_dict(parent))  # a copy
    stage = cfg.stages[-1]
    cfg.stages = [stage]
    stage.strategy.enabled = False  # no densification or pruning: the Gaussians are kept
    if f.mode == "refine":
        stage.steps = f.steps or stage.steps
        stage.lr.means = stage.lr.means_final = 0.0  # positions frozen: geometry kept
        cfg.prompt = f.prompt.strip() or parent.prompt
        if f.negative is not None:
            cfg.deepfloyd_if.negative_prompt = f.negative
            cfg.stable_diffusion.negative_prompt = f.negative
    else:
        end = t_max_at(stage.noise, 1.0)  # where the parent's stage ended
        stage.noise.t_max_start = stage.noise.t_max_end = end
        stage.noise.schedule = "constant"
        stage.lr.means = stage.lr.means_final  # held at the final position learning rate
        stage.steps = f.steps
    if f.seed is not None:
        cfg.seed = f.seed
    cfg.init_from = ""  # the Gaussians come from the parent's checkpoint
    data = to_dict(cfg)
    apply_overrides(data, overrides or {}, forbidden)
    apply_overrides(data, fixed or {})
    cfg = from_dict(RunConfig, data)
    cfg.validate()
    return cfg


def start_state(cfg: RunConfig, parent_state: dict[str, Any], mode: str) -> dict[str, Any]:
    """The follow-up's first checkpoint (stage 0, step 0): the parent's final Gaussians; for
    continue its Adam moments too (learning rates set to the follow-up stage's), for refine
    fresh ones; the random numbers from the follow-up's seed."""
    stage = cfg.stages[0]
    params = {k: v.detach().cpu() for k, v in parent_state["params"].items()}
    if mode == "continue":
        optimizers = parent_state["optimizers"]
        lrs = to_dict(stage.lr)
        for k, sd in optimizers.items():
            for group in sd["param_groups"]:
                group["lr"] = lrs[k]
    else:
        fresh = make_optimizers({k: torch.nn.Parameter(v) for k, v in params.items()}, stage)
        optimizers = {k: o.state_dict() for k, o in fresh.items()}
    return {
        "config": to_dict(cfg),
        "stage_index": 0,
        "step": 0,
        "elapsed_s": 0.0,
        "params": params,
        "optimizers": optimizers,
        "strategy_state": None,
        "rng": torch.Generator().manual_seed(cfg.seed).get_state(),
    }


def prepare_followup(
    f: FollowUp,
    out: str | os.PathLike,
    *,
    overwrite: bool = False,
    device: str | None = None,
    overrides: dict[str, Any] | None = None,
    forbidden: dict[str, str] | None = None,
    fixed: dict[str, Any] | None = None,
) -> RunConfig:
    """Check the parent and write the follow-up's run folder (config, ``followup.json`` and the
    first checkpoint); nothing is written when the parent or a setting cannot be used."""
    out = Path(out)
    parent_cfg, state = read_parent(f.parent)
    cfg = followup_config(parent_cfg, f, overrides=overrides, forbidden=forbidden, fixed=fixed)
    cfg.device = device or cfg.device
    cfg.prompt = check_prompt(cfg.prompt)
    resolve_device(cfg.device)  # a missing GPU is refused before anything is written
    prepare_run_dir(out, overwrite, resume=False)
    write_json(out / "config.json", to_dict(cfg))
    info = {
        "mode": f.mode,
        "parent": f.parent_name or str(Path(f.parent).resolve()),
        "parent_prompt": parent_cfg.prompt,
        "parent_steps": parent_cfg.total_steps,
    }
    write_json(out / FOLLOWUP_FILE, info)
    save_checkpoint(out, start_state(cfg, state, f.mode))
    return cfg


def is_followup(run_dir: str | os.PathLike) -> bool:
    return (Path(run_dir) / FOLLOWUP_FILE).is_file()


def followup_info(run_dir: str | os.PathLike) -> dict[str, Any]:
    """A follow-up's mode and parent (``followup.json``); {} for any other run."""
    path = Path(run_dir) / FOLLOWUP_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def run_followup(
    f: FollowUp | None,
    out: str | os.PathLike,
    *,
    overwrite: bool = False,
    resume: bool = False,
    callback=None,
    device: str | None = None,
    cpu_offload: bool = False,
    memory_tier: int | None = None,
    preflight=None,
    overrides: dict[str, Any] | None = None,
    forbidden: dict[str, str] | None = None,
    fixed: dict[str, Any] | None = None,
) -> dict:
    """Prepare the follow-up ``f`` in ``out`` (unless ``resume``: continue one prepared
    earlier), train it as ``run_generation`` trains a resumed run, and return its metrics with
    the mode and parent added."""
    out = Path(out)
    if not resume:
        prepare_followup(
            f, out, overwrite=overwrite, device=device, overrides=overrides,
            forbidden=forbidden, fixed=fixed,
        )  # fmt: skip
    elif not is_followup(out):
        raise InputError(f"{out}: not a refine or continue run (no {FOLLOWUP_FILE})")
    return run_generation(
        None, out, resume=True, callback=callback, device=device, cpu_offload=cpu_offload,
        memory_tier=memory_tier, preflight=preflight,
    )  # fmt: skip
