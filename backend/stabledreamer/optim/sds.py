"""Score distillation: timestep annealing, weighting, and the loss shared by every guidance.

With x_t = alpha_t x + sigma_t eps and x0_hat = (x_t - sigma_t eps_hat) / alpha_t,
    eps_hat - eps = (alpha_t / sigma_t) (x - x0_hat),
so the SDS gradient w(t) (eps_hat - eps) is the gradient of a weighted L2 between the render x and
the detached target x0_hat (StableDreamer, Sec. 3.1). ``sds_loss`` returns both the loss and
that picture (render | noisy | x0_hat) for the debug strips.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import get_args

import torch
from torch import Tensor

from ..config_space import Schedule, Weighting
from ..guidance.base import Guidance, GuidanceContext

SCHEDULES: tuple[str, ...] = get_args(Schedule)
WEIGHTINGS: tuple[str, ...] = get_args(Weighting)


@dataclass
class NoiseConfig:
    """Which timesteps a stage draws: t ~ U(t_min, t_max(progress)), as fractions of T."""

    t_min: float = 0.02
    """Lower bound; threestudio's min_step_percent 0.02 (DreamFusion)."""
    t_max_start: float = 0.98
    """Upper bound at the start of the stage; threestudio's max_step_percent 0.98."""
    t_max_end: float = 0.5
    """Upper bound at the end; StableDreamer anneals t_max down so late steps refine detail
    (threestudio's annealed configs go 0.98 -> 0.5, e.g. Magic3D/ProlificDreamer refine)."""
    schedule: Schedule = "linear"
    """How t_max goes from start to end: constant | step | linear | sqrt."""
    milestones: tuple[float, ...] = (0.5,)
    """For ``step``: fractions of the stage at which t_max drops, in equal steps."""
    weighting: Weighting = "sds"
    """w(t): ``sds`` = sigma_t^2 (DreamFusion, threestudio's default), ``uniform`` = 1,
    ``snr`` = sigma_t / alpha_t (turns the gradient into a plain x - x0_hat residual)."""
    grad_clip: float | None = None
    """Clamp each element of w(t)(eps_hat - eps) to +-grad_clip (threestudio's grad_clip);
    None: off."""

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(f"noise schedule {self.schedule!r}: choose one of {SCHEDULES}")
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"weighting {self.weighting!r}: choose one of {WEIGHTINGS}")
        if not 0.0 <= self.t_min < min(self.t_max_start, self.t_max_end) <= 1.0:
            raise ValueError("need 0 <= t_min < t_max_start, t_max_end <= 1")


def t_max_at(cfg: NoiseConfig, progress: float) -> float:
    """The annealed upper bound (fraction of T) at ``progress`` in [0, 1] through the stage."""
    p = min(max(progress, 0.0), 1.0)
    a, b = cfg.t_max_start, cfg.t_max_end
    if cfg.schedule == "constant":
        return a
    if cfg.schedule == "linear":
        return a + (b - a) * p
    if cfg.schedule == "sqrt":
        return a + (b - a) * math.sqrt(p)
    # step: drop by equal amounts at each milestone passed
    passed = sum(p >= m for m in cfg.milestones)
    return a + (b - a) * passed / max(len(cfg.milestones), 1)


def sample_timesteps(
    cfg: NoiseConfig, progress: float, n: int, num_train_timesteps: int, generator: torch.Generator
) -> Tensor:
    """Integer timesteps [n] uniform in [t_min, t_max(progress)] * T."""
    T = num_train_timesteps
    lo = int(cfg.t_min * T)
    hi = max(int(t_max_at(cfg, progress) * T), lo + 1)
    return torch.randint(lo, min(hi, T - 1) + 1, (n,), generator=generator)


def weight(cfg: NoiseConfig, alpha: Tensor, sigma: Tensor) -> Tensor:
    if cfg.weighting == "sds":
        return sigma**2
    if cfg.weighting == "snr":
        return sigma / alpha
    return torch.ones_like(sigma)


@dataclass
class SDSOutput:
    loss: Tensor  # scalar; d loss / d x = w(t)(eps_hat - eps) / B
    t: Tensor  # [B] timesteps
    x: Tensor = field(repr=False)  # [B, c, h, w] the encoded render (model space)
    x_t: Tensor = field(repr=False)  # [B, c, h, w] the noised input
    x0_hat: Tensor = field(repr=False)  # [B, c, h, w] the one-step estimate (detached)
    grad: Tensor = field(repr=False)  # [B, c, h, w] w(t)(eps_hat - eps) after clipping


def sds_loss(
    guidance: Guidance,
    rgb: Tensor,  # [B, H, W, 3] renders in [0, 1]
    ctx: GuidanceContext,
    t: Tensor,  # [B] integer timesteps
    cfg: NoiseConfig,
    generator: torch.Generator | None = None,
) -> SDSOutput:
    """The SDS loss of ``rgb`` under ``guidance`` at timesteps ``t``."""
    x = guidance.encode(rgb)
    B = x.shape[0]
    eps = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
    alpha, sigma = guidance.alphas_sigmas(t)
    alpha = alpha.to(x).view(B, 1, 1, 1)
    sigma = sigma.to(x).view(B, 1, 1, 1)
    with torch.no_grad():
        x_t = alpha * x.detach() + sigma * eps
        eps_hat = guidance.predict_noise(x_t, t, ctx).to(x)
        grad = weight(cfg, alpha, sigma) * (eps_hat - eps)
        grad = torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0)
        if cfg.grad_clip is not None:
            grad = grad.clamp(-cfg.grad_clip, cfg.grad_clip)
        x0_hat = (x_t - sigma * eps_hat) / alpha
    # Reparametrised: 0.5 ||x - (x - grad)||^2 has gradient ``grad`` with respect to x.
    target = (x - grad).detach()
    loss = 0.5 * ((x - target) ** 2).sum() / B
    return SDSOutput(loss=loss, t=t, x=x.detach(), x_t=x_t, x0_hat=x0_hat, grad=grad)
