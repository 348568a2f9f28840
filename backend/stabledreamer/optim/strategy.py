"""Densify / split / prune: gsplat's DefaultStrategy with a cap on the Gaussian count.

The strategy is an object beside the model (gsplat-style): its running state is a plain dict, it
hooks in around ``loss.backward()``, and it changes the parameters and the optimizer state
together through gsplat's ops.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from gsplat.strategy import DefaultStrategy
from gsplat.strategy.ops import duplicate, remove, reset_opa, split


@dataclass
class StrategyConfig:
    enabled: bool = True
    """Densify and prune during this stage (StableDreamer densifies mostly in stage 1)."""
    max_gaussians: int = 100_000
    """Cap on the count: growth stops there (highest-gradient candidates go first)."""
    grow_grad2d: float = 0.0002
    """Mean screen-space gradient norm above which a Gaussian grows (gsplat / 3DGS default for a
    mean-reduced photometric loss, gradients normalised to [-1, 1] screen space). It scales with
    the loss: presets whose loss is a sum over pixels (SDS) set their own value."""
    grow_scale3d: float = 0.01
    """Below this size (fraction of the scene scale) a Gaussian is duplicated, above it split
    (3DGS)."""
    prune_opacity: float = 0.005
    """Gaussians less opaque than this are removed (3DGS / gsplat)."""
    prune_scale3d: float = 0.1
    """Gaussians larger than this fraction of the scene are removed (3DGS / gsplat: 0.1), from
    ``prune_scale3d_after`` on."""
    prune_scale3d_after: int | None = None
    """Stage step after which the size pruning applies. None: 3DGS's and gsplat's rule, after the
    first opacity reset (``opacity_reset_every``) when resets are on, else from the first
    refinement (``start_step``): gsplat reads its own reset period, which never comes here."""
    start_step: int = 100
    """First refinement (stage steps)."""
    stop_fraction: float = 0.7
    """Refinement stops at this fraction of the stage, so the last steps polish a fixed set."""
    every: int = 100
    """Steps between refinements (3DGS: 100)."""
    opacity_reset_every: int = 0
    """Reset opacities to 2 x prune_opacity every this many steps (3DGS: 3000); 0 = never.
    gsplat 1.5.3's own reset never fires (an operator-precedence slip), so it is done here."""


@dataclass
class CappedStrategy(DefaultStrategy):
    """DefaultStrategy whose growth stops at ``max_gaussians``."""

    max_gaussians: int = 100_000
    opacity_reset_every: int = 0
    prune_scale3d_after: int = 0

    @torch.no_grad()
    def _prune_gs(self, params, optimizers, state: dict[str, Any], step: int) -> int:
        # gsplat prunes large Gaussians only when step > reset_every, its own opacity-reset
        # period, which is off here (see make_strategy): the same rule with our own step.
        is_prune = torch.sigmoid(params["opacities"].flatten()) < self.prune_opa
        if step > self.prune_scale3d_after:
            scale = torch.exp(params["scales"]).max(dim=-1).values
            is_prune |= scale > self.prune_scale3d * state["scene_scale"]
        n_prune = int(is_prune.sum())
        if n_prune > 0:
            remove(params=params, optimizers=optimizers, state=state, mask=is_prune)
        return n_prune

    @torch.no_grad()
    def _grow_gs(self, params, optimizers, state: dict[str, Any], step: int) -> tuple[int, int]:
        grads = state["grad2d"] / state["count"].clamp_min(1)
        is_grad_high = grads > self.grow_grad2d
        is_small = (
            torch.exp(params["scales"]).max(dim=-1).values
            <= self.grow_scale3d * state["scene_scale"]
        )
        budget = self.max_gaussians - params["means"].shape[0]
        candidates = torch.where(is_grad_high)[0]
        if budget <= 0:
            return 0, 0
        if candidates.numel() > budget:  # keep the strongest gradients
            keep = grads[candidates].topk(budget).indices
            mask = torch.zeros_like(is_grad_high)
            mask[candidates[keep]] = True
            is_grad_high = mask
        is_dupli = is_grad_high & is_small
        is_split = is_grad_high & ~is_small
        n_dupli, n_split = int(is_dupli.sum()), int(is_split.sum())
        if n_dupli > 0:
            duplicate(params=params, optimizers=optimizers, state=state, mask=is_dupli)
        is_split = torch.cat(
            [is_split, torch.zeros(n_dupli, dtype=torch.bool, device=grads.device)]
        )
        if n_split > 0:
            split(
                params=params,
                optimizers=optimizers,
                state=state,
                mask=is_split,
                revised_opacity=self.revised_opacity,
            )
        return n_dupli, n_split

    def step_post_backward(self, params, optimizers, state, step, info, packed: bool = False):
        super().step_post_backward(params, optimizers, state, step, info, packed=packed)
        every = self.opacity_reset_every
        if every > 0 and step > 0 and step % every == 0 and step < self.refine_stop_iter:
            reset_opa(params=params, optimizers=optimizers, state=state, value=self.prune_opa * 2.0)


def make_strategy(cfg: StrategyConfig, stage_steps: int) -> CappedStrategy | None:
    if not cfg.enabled:
        return None
    return CappedStrategy(
        prune_opa=cfg.prune_opacity,
        grow_grad2d=cfg.grow_grad2d,
        grow_scale3d=cfg.grow_scale3d,
        prune_scale3d=cfg.prune_scale3d,
        refine_start_iter=cfg.start_step,
        refine_stop_iter=int(cfg.stop_fraction * stage_steps),
        refine_every=cfg.every,
        reset_every=10**9,  # gsplat's own reset: see opacity_reset_every
        max_gaussians=cfg.max_gaussians,
        opacity_reset_every=cfg.opacity_reset_every,
        prune_scale3d_after=_prune_scale3d_after(cfg),
    )


def _prune_scale3d_after(cfg: StrategyConfig) -> int:
    if cfg.prune_scale3d_after is not None:
        return cfg.prune_scale3d_after
    return cfg.opacity_reset_every if cfg.opacity_reset_every > 0 else cfg.start_step
