"""The oracle guidance: a diffusion "model" that knows the answer.

It predicts eps_hat = (x_t - alpha_t x_target) / sigma_t, x_target being the target mesh seen from
the same camera on the same background. Through the shared SDS code this turns text-to-3D into
multi-view reconstruction, so the optimizer, renderer and densification can be scored without
model weights. With a perfect oracle the SDS noise cancels exactly; the ``imperfect`` mode makes
x0_hat blurrier and more perturbed at larger t, as a real denoiser's one-step estimate is, so
noise schedules and annealing can be compared on CPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import get_args

import torch
import torch.nn.functional as F
from torch import Tensor

from ..cameras import CameraConfig, Cameras, sample_cameras
from ..config_space import OracleMode
from ..targets.raster import render_mesh
from ..targets.target_mesh import TargetMesh
from .base import GuidanceContext


@dataclass
class OracleConfig:
    mode: OracleMode = "perfect"
    """``perfect``: x0_hat is the true view; ``imperfect``: blurred and perturbed more at
    larger t."""
    num_train_timesteps: int = 1000
    """T, as DeepFloyd IF and Stable Diffusion."""
    bank_views: int = 240
    """Training views rendered once at the start; training cameras are drawn from them."""
    supersample: int = 4
    """Target views are rendered at this multiple of the resolution and box-filtered."""
    blur_sigma_max: float = 0.04
    """Imperfect mode: Gaussian blur sigma at t = T, as a fraction of the image width."""
    perturb_max: float = 0.25
    """Imperfect mode: amplitude of a smooth random colour field added at t = T (colour units,
    [0, 1])."""

    def __post_init__(self) -> None:
        if self.mode not in get_args(OracleMode):
            raise ValueError(f"oracle mode {self.mode!r}: choose one of {get_args(OracleMode)}")


def cosine_alphas_cumprod(T: int) -> Tensor:
    """alpha-bar of the cosine schedule (DeepFloyd IF's squaredcos_cap_v2, Nichol & Dhariwal)."""
    from diffusers import DDPMScheduler

    sched = DDPMScheduler(num_train_timesteps=T, beta_schedule="squaredcos_cap_v2")
    return sched.alphas_cumprod.to(torch.float32)


class OracleGuidance:
    """Pixel-space guidance whose x0 estimate is the target mesh's view."""

    name = "oracle"

    def __init__(
        self,
        target: TargetMesh,
        cfg: OracleConfig,
        camera_cfg: CameraConfig,
        width: int,
        height: int,
        generator: torch.Generator,
    ) -> None:
        self.target = target
        self.cfg = cfg
        self.num_train_timesteps = cfg.num_train_timesteps
        self._alphas_cumprod = cosine_alphas_cumprod(cfg.num_train_timesteps)
        self._generator = generator
        self.bank = sample_cameras(camera_cfg, width, height, generator, n=cfg.bank_views)
        black = torch.zeros(3)
        rgb, alpha = render_mesh(target, self.bank, black, supersample=cfg.supersample)
        self._bank_rgb = rgb  # [V, H, W, 3] premultiplied (on black)
        self._bank_alpha = alpha  # [V, H, W, 1]
        self._bank_key = self._keys(self.bank)

    # -- the contract -----------------------------------------------------------------------
    def encode(self, rgb: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return rgb.permute(0, 3, 1, 2) * 2.0 - 1.0

    def decode(self, x: Tensor) -> Tensor:
        return ((x + 1.0) / 2.0).clamp(0.0, 1.0).permute(0, 2, 3, 1)

    def alphas_sigmas(self, t: Tensor) -> tuple[Tensor, Tensor]:
        a = self._alphas_cumprod[t.cpu().long()]
        return a.sqrt(), (1.0 - a).sqrt()

    def prepare(self, ctx: GuidanceContext) -> None:
        """Nothing to get ready (``guidance.base``)."""

    def predict_noise(self, x_t: Tensor, t: Tensor, ctx: GuidanceContext) -> Tensor:
        target = self.encode(self.target_views(ctx.cameras, ctx.background)).to(x_t)
        if self.cfg.mode == "imperfect":
            target = self._degrade(target, t)
        alpha, sigma = (v.to(x_t).view(-1, 1, 1, 1) for v in self.alphas_sigmas(t))
        return (x_t - alpha * target) / sigma

    # -- views ------------------------------------------------------------------------------
    def view_bank(self) -> Cameras:
        """The cameras whose target views are cached; training draws from these."""
        return self.bank

    def target_views(self, cameras: Cameras, background: Tensor) -> Tensor:
        """Target images [B, H, W, 3] composited on ``background`` [B, 3] (or [3])."""
        bg = background.reshape(-1, 1, 1, 3).expand(len(cameras), 1, 1, 3).cpu()
        idx = self._lookup(cameras)
        if idx is not None:
            rgb, alpha = self._bank_rgb[idx], self._bank_alpha[idx]
        else:  # not a bank camera (e.g. held-out): render now
            rgb, alpha = render_mesh(
                self.target, cameras.to("cpu"), torch.zeros(3), supersample=self.cfg.supersample
            )
        return rgb + (1.0 - alpha) * bg

    @staticmethod
    def _keys(cameras: Cameras) -> Tensor:  # [C, 25]
        K = cameras.Ks.reshape(-1, 9) / max(cameras.width, cameras.height)
        return torch.cat([cameras.viewmats.reshape(-1, 16), K], dim=-1).cpu()

    def _lookup(self, cameras: Cameras) -> Tensor | None:
        if (cameras.width, cameras.height) != (self.bank.width, self.bank.height):
            return None
        d = torch.cdist(self._keys(cameras), self._bank_key)  # [C, V]
        dist, idx = d.min(dim=1)
        return idx if bool((dist < 1e-5).all()) else None

    # -- the imperfect denoiser ---------------------------------------------------------------
    def _degrade(self, x: Tensor, t: Tensor) -> Tensor:
        """Blur and perturb x [B, 3, H, W] (model space) more at larger t."""
        B, _, H, W = x.shape
        frac = (t.to(torch.float32) / self.num_train_timesteps).to(x.device)  # [B]
        out = torch.empty_like(x)
        for b in range(B):
            sigma_px = float(frac[b]) * self.cfg.blur_sigma_max * W
            out[b] = _gaussian_blur(x[b : b + 1], sigma_px)[0] if sigma_px > 0.3 else x[b]
        field = torch.randn(B, 3, 4, 4, generator=self._generator).to(x)
        field = F.interpolate(field, size=(H, W), mode="bicubic", align_corners=False)
        # x is in [-1, 1]: an amplitude a in [0, 1] colour units is 2a here.
        return out + 2.0 * self.cfg.perturb_max * frac.view(B, 1, 1, 1) * field


def _gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    radius = max(1, int(math.ceil(3 * sigma)))
    k = torch.exp(-0.5 * (torch.arange(-radius, radius + 1, dtype=x.dtype) / sigma) ** 2)
    k = (k / k.sum()).to(x.device)
    c = x.shape[1]
    xp = F.pad(x, (radius, radius, radius, radius), mode="replicate")
    xp = F.conv2d(xp, k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(xp, k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)
