"""The training loop: a list of stages, each a guidance shaping the Gaussians through SDS.

Per step: draw cameras and backgrounds, render, draw annealed timesteps, SDS loss through the
stage's guidance plus the named regularisers, backward, Adam, densify/prune (strategy), then
progress, debug strips and checkpoints. A NaN stops the run with ``TrainingDiverged``; the last
checkpoint (always finite) is kept, so ``resume`` continues from a good state.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .. import gaussians as G
from ..cameras import Cameras, sample_cameras
from .checkpoint import load_checkpoint, save_checkpoint
from ..config import RunConfig, StageConfig, to_dict
from .debug_images import debug_strip, save_png
from ..device import resolve_device
from ..guidance.base import Guidance, GuidanceContext
from ..optim.regularizers import regularization_losses, weighted_sum
from ..render import render
from ..render.backend import backend_from_env, resolve_backend
from ..optim.sds import sample_timesteps, sds_loss
from ..optim.strategy import make_strategy
from ..errors import StableDreamerError

GuidanceFactory = Callable[[StageConfig, int], Guidance]  # (stage config, stage index) -> guidance


class TrainingDiverged(StableDreamerError):
    """The loss or the parameters became NaN/inf."""


class TrainingCancelled(StableDreamerError):
    """The progress callback asked the run to stop (a checkpoint was written first)."""


@dataclass
class Progress:
    stage: str
    stage_index: int
    stage_count: int
    step: int  # steps done in this stage
    stage_steps: int
    global_step: int
    total_steps: int
    losses: dict[str, float]
    gaussians: int
    elapsed_s: float
    eta_s: float
    t: list[int] = field(default_factory=list)
    params: dict[str, Tensor] | None = field(default=None, repr=False)
    """The live parameters (for previews): read them, copy what you keep, never modify."""
    debug_image: Tensor | None = field(default=None, repr=False)
    """[H, 3W, 3] render | noisy | x0_hat, on the steps that wrote a debug strip."""
    num_train_timesteps: int = 0
    """T of the stage's guidance: ``t`` / T is the noise level in [0, 1]."""


@dataclass
class TrainState:
    params: dict[str, torch.nn.Parameter]
    optimizers: dict[str, torch.optim.Optimizer]
    stage_index: int = 0
    step: int = 0  # steps done in the current stage
    strategy_state: dict[str, Any] | None = None
    elapsed_s: float = 0.0


def make_optimizers(params: dict[str, torch.nn.Parameter], stage: StageConfig):
    lrs = to_dict(stage.lr)
    # eps 1e-15 as 3DGS: gradients of Gaussian parameters are tiny.
    return {k: torch.optim.Adam([p], lr=lrs[k], eps=1e-15) for k, p in params.items()}


def _means_lr(stage: StageConfig, step: int) -> float:
    """Exponential decay from lr.means to lr.means_final over the stage (3DGS)."""
    p = min(step / max(stage.steps - 1, 1), 1.0)
    a, b = stage.lr.means, stage.lr.means_final
    if a <= 0.0 or b <= 0.0:  # a frozen end (refine freezes positions: 0 -> 0): linear
        return a + (b - a) * p
    return math.exp(math.log(a) * (1 - p) + math.log(b) * p)


def _backgrounds(kind: str, n: int, generator: torch.Generator) -> Tensor:  # [n, 3] on the CPU
    if kind == "white":
        return torch.ones(n, 3)
    if kind == "black":
        return torch.zeros(n, 3)
    return torch.rand(n, 3, generator=generator)


class Trainer:
    def __init__(
        self,
        cfg: RunConfig,
        run_dir: str | os.PathLike,
        guidance_factory: GuidanceFactory,
        init: dict[str, Tensor] | None = None,
        callback: Callable[[Progress], bool | None] | None = None,
    ) -> None:
        """``callback`` gets a ``Progress`` after every step; returning True cancels the run.

        Parameters, Adam state, cameras, backgrounds and renders live on ``cfg.device``; the
        random draws (cameras, timesteps, noise) come from a CPU generator and are moved there,
        so a run draws the same numbers on any device and resumes on another one."""
        cfg.validate()
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        # The concrete rasteriser of this run (gsplat | native | torch), chosen once here.
        self.render_backend = resolve_backend(backend_from_env(cfg.render_backend), self.device)
        self.run_dir = Path(run_dir)
        self.guidance_factory = guidance_factory
        self.callback = callback
        self.generator = torch.Generator().manual_seed(cfg.seed)
        if init is None:
            init = G.init_ball(cfg.init, torch.Generator().manual_seed(cfg.seed))
        params = {
            k: torch.nn.Parameter(v.detach().to(self.device, torch.float32, copy=True))
            for k, v in init.items()
        }
        self.state = TrainState(params, make_optimizers(params, cfg.stages[0]))
        self._guidance: Guidance | None = None
        self._guidance_stage = -1

    # -- checkpoints ----------------------------------------------------------------------------
    def checkpoint(self) -> None:
        s = self.state
        save_checkpoint(
            self.run_dir,
            {
                "config": to_dict(self.cfg),
                "stage_index": s.stage_index,
                "step": s.step,
                "elapsed_s": s.elapsed_s,
                "params": {k: v.detach() for k, v in s.params.items()},
                "optimizers": {k: o.state_dict() for k, o in s.optimizers.items()},
                "strategy_state": s.strategy_state,
                "rng": self.generator.get_state(),
            },
        )

    def restore(self) -> None:
        """Continue from the run folder's checkpoint (written on any device)."""
        ck = load_checkpoint(self.run_dir)  # tensors on the CPU
        params = {
            k: torch.nn.Parameter(v.to(self.device, copy=True)) for k, v in ck["params"].items()
        }
        stage = self.cfg.stages[min(ck["stage_index"], len(self.cfg.stages) - 1)]
        optimizers = make_optimizers(params, stage)
        for k, o in optimizers.items():
            o.load_state_dict(ck["optimizers"][k])  # moves the moments to the params' device
        self.state = TrainState(
            params,
            optimizers,
            ck["stage_index"],
            ck["step"],
            _to_device(ck["strategy_state"], self.device),
            ck["elapsed_s"],
        )
        self.generator.set_state(ck["rng"])

    # -- the loop -------------------------------------------------------------------------------
    def guidance_for(self, stage_index: int) -> Guidance:
        if self._guidance_stage != stage_index:
            self._guidance = None  # free the previous stage's model first
            self._guidance = self.guidance_factory(self.cfg.stages[stage_index], stage_index)
            self._guidance_stage = stage_index
        return self._guidance

    def train(self) -> dict[str, Tensor]:
        """Run the remaining stages; returns the final Gaussians, detached, on the CPU."""
        cfg, s = self.cfg, self.state
        if cfg.threads > 0:
            torch.set_num_threads(cfg.threads)
        while s.stage_index < len(cfg.stages):
            self._run_stage(s.stage_index)
            s.stage_index += 1
            s.step = 0
            s.strategy_state = None
            if s.stage_index < len(cfg.stages):  # fresh Adam moments with the next stage's lrs
                s.optimizers = make_optimizers(s.params, cfg.stages[s.stage_index])
            self.checkpoint()
        return {k: v.cpu() for k, v in G.detached(s.params).items()}

    def _run_stage(self, index: int) -> None:
        cfg, s = self.cfg, self.state
        stage = cfg.stages[index]
        guidance = self.guidance_for(index)
        strategy = make_strategy(stage.strategy, stage.steps)
        if strategy is not None and s.strategy_state is None:
            s.strategy_state = strategy.initialize_state(scene_scale=1.0)
        bank: Cameras | None = guidance.view_bank()
        done_before = sum(st.steps for st in cfg.stages[:index])
        t_start = time.perf_counter() - s.elapsed_s
        steps_at_start = done_before + s.step

        def clock_starts() -> None:
            # The stage clock starts once the guidance is ready for the first step's cameras
            # (a kept text encoder on the CPU encodes their view prompts then), as it starts
            # after model loading: elapsed_s and the ETA measure training steps only.
            nonlocal t_start
            t_start = time.perf_counter() - s.elapsed_s

        first = True
        while s.step < stage.steps:
            step = s.step
            for k, o in s.optimizers.items():
                if k == "means":
                    o.param_groups[0]["lr"] = _means_lr(stage, step)
            ready = clock_starts if first else None
            first = False
            losses, t, strip = self._step(
                stage, guidance, strategy, bank, done_before + step, ready
            )
            s.step += 1
            s.elapsed_s = time.perf_counter() - t_start
            global_done = done_before + s.step
            rate = s.elapsed_s / max(global_done - steps_at_start, 1) if global_done else 0.0
            progress = Progress(
                stage.name,
                index,
                len(cfg.stages),
                s.step,
                stage.steps,
                global_done,
                cfg.total_steps,
                losses,
                G.count(s.params),
                s.elapsed_s,
                rate * (cfg.total_steps - global_done),
                t,
                s.params,
                strip,
                guidance.num_train_timesteps,
            )
            cancel = self.callback(progress) if self.callback else False
            if s.step % cfg.checkpoint_every == 0 or s.step == stage.steps or cancel:
                self.checkpoint()
            if cancel:
                raise TrainingCancelled(f"cancelled at {stage.name} step {s.step}")

    def _step(self, stage, guidance, strategy, bank, global_step: int, ready=None):
        s, cfg, gen = self.state, self.cfg, self.generator
        B = cfg.camera.batch_size
        if bank is not None:
            cams = bank[torch.randint(0, len(bank), (B,), generator=gen).to(bank.device)]
        else:
            cams = sample_cameras(cfg.camera, stage.resolution, stage.resolution, gen)
        cams = cams.to(self.device)
        bg = _backgrounds(stage.background, B, gen).to(self.device)
        ctx = GuidanceContext(cameras=cams, background=bg, step=global_step)
        guidance.prepare(ctx)
        if ready is not None:
            ready()
        out = render(s.params, cams, bg, backend=self.render_backend)
        if strategy is not None:
            strategy.step_pre_backward(s.params, s.optimizers, s.strategy_state, s.step, out.meta)
        progress = s.step / max(stage.steps - 1, 1)
        t = sample_timesteps(stage.noise, progress, B, guidance.num_train_timesteps, gen)
        sds = sds_loss(guidance, out.rgb, ctx, t, stage.noise, gen)
        regs = regularization_losses(s.params, cfg.regularizer)
        loss = sds.loss + weighted_sum(regs, cfg.regularizer)
        if not torch.isfinite(loss):
            raise TrainingDiverged(
                f"loss became {loss.item()} at {stage.name} step {s.step}; the last good "
                "checkpoint is kept: lower the learning rates or set noise.grad_clip, then resume"
            )
        loss.backward()
        for o in s.optimizers.values():
            o.step()
            o.zero_grad(set_to_none=True)
        if strategy is not None:
            # gsplat's split draws from the global RNG: seed it per step so a resumed run
            # densifies exactly as the uninterrupted one would.
            torch.manual_seed(cfg.seed * 1_000_003 + global_step)
            strategy.step_post_backward(s.params, s.optimizers, s.strategy_state, s.step, out.meta)
        for k, p in s.params.items():
            if not torch.isfinite(p).all():
                raise TrainingDiverged(
                    f"parameter {k!r} became NaN/inf at {stage.name} step {s.step}; the last good "
                    "checkpoint is kept: lower the learning rates, then resume"
                )
        strip = None
        stage_end = s.step + 1 == stage.steps  # short runs still leave one strip per stage
        if cfg.debug_every and ((s.step + 1) % cfg.debug_every == 0 or stage_end):
            strip = debug_strip(guidance, out.rgb.detach(), sds)
            save_png(self.run_dir / "debug" / f"{stage.name}_{s.step + 1:06d}.png", strip)
        losses = {
            "sds": float(sds.loss.detach()),
            **{k: float(v.detach()) for k, v in regs.items()},
            "total": float(loss.detach()),
        }
        return losses, t.tolist(), strip


def _to_device(value: Any, device: torch.device) -> Any:
    """``value`` (tensors in dicts and lists: the strategy state) with tensors on ``device``."""
    if isinstance(value, Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {k: _to_device(v, device) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_to_device(v, device) for v in value)
    return value
