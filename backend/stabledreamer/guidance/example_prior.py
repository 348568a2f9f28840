"""The example-based prior: the exact denoiser of a finite set of labelled renders.

For images x_1..x_N drawn uniformly, the best possible denoiser of x_t = alpha_t x + sigma_t eps
has a closed form: E[x | x_t] = sum_i w_i x_i with w = softmax(-||x_t - alpha_t x_i||^2 /
2 sigma_t^2). This guidance uses it on a bank of renders of known objects (``prior_bank``), each
labelled with its object's prompt and its view bucket (front / side / back / overhead, by the
thresholds of the view-dependent prompts):

- conditional: the prompt's images in the camera's bucket (all the prompt's images with view
  prompts off);
- unconditional: every object's images in that bucket (``uncond="bucket"``) or the whole bank
  (``"all"``; also with view prompts off);
- classifier-free guidance on x0: x0 = x0_u + s (x0_c - x0_u), which is the same as on eps; then
  eps_hat = (x_t - alpha_t x0) / sigma_t, through the shared SDS code as any guidance.

Each bank image is composited on the view's background (``GuidanceContext.background``), so random
backgrounds work as they do for the real models. It sees the camera's view bucket only, never its
pose: two cameras of one bucket get the same prediction. So it behaves like a real prior where it
matters: at high noise x0 is an average over many views (and objects), at low noise it snaps to
the nearest example, which need not be the camera's true view (multi-face results happen).

It is a memorising prior over a known catalogue, not a general text-to-image model: it exists so
the text-to-3D recipe can be measured offline against ground truth. Nothing is trained.

Speed: the images sit in one matrix [N, 4 H W] (2 rgb - 1 premultiplied, then 1 - alpha), sorted
by bucket; a step is one matrix product over the buckets of the batch (distances, expanded so the
background enters through per-image sums) and one over the images whose weight is not negligible
(the posterior mean).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import get_args

import torch
from torch import Tensor

from ..config_space import PriorUncond
from .base import GuidanceContext
from .loading import resize_renders
from .oracle import cosine_alphas_cumprod
from .prior_bank import PriorBank, PriorBankError
from .prompts import ViewPromptConfig, view_indices

UNCOND: tuple[str, ...] = get_args(PriorUncond)
_MIN_WEIGHT = 1e-10
"""Images whose posterior weight is below this in every row are left out of the mean (their
total contribution is below N * 1e-10 of a pixel value)."""
_CHUNK = 256  # bank images converted to float per chunk (keeps the peak memory near the matrix's)


@dataclass
class ExamplePriorConfig:
    bank: str = "catalogue"
    """A folder written by ``stabledreamer prior build``, or ``catalogue`` (the built-in objects,
    built once and cached)."""
    guidance_scale: float = 7.5
    """Classifier-free guidance scale. 7.5 is Stable Diffusion's usual sampling scale (diffusers'
    default) and the value of the first trial of this prior; threestudio's SDS configs use 100
    (SD) and 20 (IF)."""
    uncond: PriorUncond = "bucket"
    """The unconditional set: ``bucket`` = every object's images of the camera's view bucket,
    ``all`` = the whole bank."""
    num_train_timesteps: int = 1000
    """T, as DeepFloyd IF and Stable Diffusion (cosine schedule, IF's squaredcos_cap_v2)."""
    view_prompts: ViewPromptConfig = field(default_factory=ViewPromptConfig)
    """On: the conditional set is the prompt's images of the camera's bucket (the text's view
    suffix); off: all the prompt's images. Thresholds: the view prompts' (threestudio's)."""

    def __post_init__(self) -> None:
        if self.uncond not in UNCOND:
            raise ValueError(f"example_prior.uncond {self.uncond!r}: choose one of {UNCOND}")


class ExamplePriorGuidance:
    """The guidance contract (``guidance.base.Guidance``) on a bank of examples at one size."""

    name = "example_prior"

    def __init__(
        self, prompt: str, bank: PriorBank, cfg: ExamplePriorConfig, resolution: int
    ) -> None:
        self.cfg = cfg
        self.bank = bank
        self.resolution = resolution
        self.target = bank.index_of(prompt)
        self.num_train_timesteps = cfg.num_train_timesteps
        self._alphas_cumprod = cosine_alphas_cumprod(cfg.num_train_timesteps)
        if cfg.view_prompts.enabled:
            bucket = view_indices(cfg.view_prompts, bank.azimuth_deg, bank.elevation_deg)
        else:
            bucket = torch.zeros(len(bank), dtype=torch.long)
        # Sorted by bucket, then by object: a bucket's images and the prompt's images in it are
        # contiguous rows, so both passes read slices of the matrix rather than gathers.
        order = torch.argsort(bucket * len(bank.objects) + bank.labels, stable=True)
        self.bucket = bucket[order]  # [N] sorted
        self.labels = bank.labels[order]  # [N]
        self.azimuth_deg = bank.azimuth_deg[order]
        self.elevation_deg = bank.elevation_deg[order]
        self._um, self._norm_u, self._u_dot_m, self._norm_m = _example_matrix(
            bank, resolution, order
        )
        self._slices = {
            int(g): (int(torch.searchsorted(self.bucket, g)),
                     int(torch.searchsorted(self.bucket, g, right=True)))
            for g in self.bucket.unique()
        }  # fmt: skip

    # -- the contract -------------------------------------------------------------------------
    def encode(self, rgb: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return resize_renders(rgb, self.resolution) * 2.0 - 1.0

    def decode(self, x: Tensor) -> Tensor:
        return ((x + 1.0) / 2.0).clamp(0.0, 1.0).permute(0, 2, 3, 1)

    def alphas_sigmas(self, t: Tensor) -> tuple[Tensor, Tensor]:
        a = self._alphas_cumprod[t.cpu().long()]
        return a.sqrt(), (1.0 - a).sqrt()

    def view_bank(self) -> None:
        """No fixed cameras: the trainer samples random orbit cameras, as for a real model (the
        prior sees only their view bucket)."""
        return None

    def prepare(self, ctx: GuidanceContext) -> None:
        """Nothing to get ready (``guidance.base``)."""

    @torch.no_grad()
    def predict_noise(self, x_t: Tensor, t: Tensor, ctx: GuidanceContext) -> Tensor:
        alpha, sigma = (v.to(x_t).view(-1, 1, 1, 1) for v in self.alphas_sigmas(t))
        x0 = self.predict_x0(x_t, t, ctx)
        return (x_t - alpha * x0.to(x_t)) / sigma

    # -- the denoiser -------------------------------------------------------------------------
    def buckets_of(self, ctx: GuidanceContext) -> Tensor:
        """The view bucket [B] of each camera (0 for all with view prompts off)."""
        cams = ctx.cameras
        if not self.cfg.view_prompts.enabled:
            return torch.zeros(len(cams), dtype=torch.long)
        return view_indices(self.cfg.view_prompts, cams.azimuth_deg.cpu(), cams.elevation_deg.cpu())

    @torch.no_grad()
    def predict_x0(self, x_t: Tensor, t: Tensor, ctx: GuidanceContext) -> Tensor:
        """x0 after classifier-free guidance [B, 3, H, W] (on x_t's device)."""
        x0_c, x0_u = self.posterior_means(x_t, t, ctx)
        s = self.cfg.guidance_scale
        return (x0_u + s * (x0_c - x0_u)).to(x_t.device)

    @torch.no_grad()
    def posterior_means(
        self, x_t: Tensor, t: Tensor, ctx: GuidanceContext
    ) -> tuple[Tensor, Tensor]:
        """E[x0 | x_t] over the conditional and the unconditional sets, each [B, 3, H, W]."""
        B, C, H, W = x_t.shape
        if (H, W) != (self.resolution, self.resolution) or C != 3:
            raise PriorBankError(
                f"the example prior works at {self.resolution}x{self.resolution}, got x_t of "
                f"shape {tuple(x_t.shape)}"
            )
        alpha, sigma = (v.double() for v in self.alphas_sigmas(t))  # [B]
        z = x_t.detach().float().cpu().reshape(B, 3, H * W)
        bg = ctx.background.detach().float().cpu().reshape(-1, 3).expand(B, 3)
        zf = torch.cat([z.reshape(B, 3 * H * W), (2.0 * bg[:, :, None] * z).sum(1)], dim=1)
        buckets = self.buckets_of(ctx)
        out_c = torch.empty(B, 3 * H * W)
        out_u = torch.empty(B, 3 * H * W)
        for g in buckets.unique().tolist():
            items = (buckets == g).nonzero()[:, 0]
            lo, hi = self._candidates(g)
            cond = self._cond_mask(g, lo, hi)
            if not bool(cond.any()):  # no image of the prompt in this bucket (a tiny bank):
                lo, hi = 0, len(self.labels)  # as with view prompts off
                cond = self.labels == self.target
            dots = (zf[items] @ self._um[lo:hi].T).double()  # [b, n] z . x_i
            bgi = bg[items].double()
            norms = (
                self._norm_u[lo:hi][None]
                + 4.0 * bgi @ self._u_dot_m[lo:hi].T
                + 4.0 * (bgi**2).sum(1, keepdim=True) * self._norm_m[lo:hi][None]
            )  # [b, n] ||x_i||^2 on each item's background
            a, s2 = alpha[items][:, None], (sigma[items] ** 2)[:, None]
            logits = (2.0 * a * dots - a * a * norms) / (2.0 * s2)
            w_u = torch.softmax(logits, dim=1)
            w_c = torch.softmax(logits.masked_fill(~cond[None], float("-inf")), dim=1)
            out_c[items] = self._weighted(w_c, lo, bg[items], H * W)
            out_u[items] = self._weighted(w_u, lo, bg[items], H * W)
        return out_c.view(B, 3, H, W), out_u.view(B, 3, H, W)

    def _candidates(self, g: int) -> tuple[int, int]:
        if self.cfg.view_prompts.enabled and self.cfg.uncond == "bucket":
            return self._slices.get(g, (0, 0))
        return 0, len(self.labels)

    def _cond_mask(self, g: int, lo: int, hi: int) -> Tensor:
        mask = self.labels[lo:hi] == self.target
        if self.cfg.view_prompts.enabled:
            mask &= self.bucket[lo:hi] == g
        return mask

    def _weighted(self, w: Tensor, lo: int, bg: Tensor, hw: int) -> Tensor:
        """sum_i w_i x_i(bg) [R, 3 H W] for weights w [R, n] over images lo..lo+n."""
        cols = (w > _MIN_WEIGHT).any(dim=0).nonzero()[:, 0]
        a, b = int(cols[0]), int(cols[-1]) + 1
        if b - a <= 4 * len(cols):  # a contiguous run (the prompt's rows, or most of a bucket)
            w = w[:, a:b].float()
            rows = self._um[lo + a : lo + b]
        else:  # a few scattered images: gather them
            w = w[:, cols].float()
            rows = self._um[lo + cols]
        r = (w / w.sum(dim=1, keepdim=True)) @ rows  # [R, 4 H W]
        u, m = r[:, : 3 * hw].view(-1, 3, hw), r[:, 3 * hw :]
        return (u + 2.0 * bg[:, :, None] * m[:, None, :]).reshape(-1, 3 * hw)


def _example_matrix(bank: PriorBank, resolution: int, order: Tensor):
    """[N, 4 H W] rows (2 rgb - 1 then 1 - alpha) in ``order``, with ||u||^2, u_c . m, ||m||^2."""
    rgb8, alpha8 = bank.images_u8(resolution)
    N, hw = len(order), resolution * resolution
    if N == 0:
        raise PriorBankError(f"the prior bank {bank.folder} holds no images")
    um = torch.empty(N, 4 * hw)
    norm_u, norm_m = torch.empty(N, dtype=torch.float64), torch.empty(N, dtype=torch.float64)
    u_dot_m = torch.empty(N, 3, dtype=torch.float64)
    for start in range(0, N, _CHUNK):
        idx = order[start : start + _CHUNK]
        n = len(idx)
        # In units of 1/255 the entries are integers: the per-image sums are exact in int64.
        q = 2 * rgb8[idx].to(torch.int32).permute(0, 3, 1, 2).reshape(n, 3, hw) - 255  # 255 u
        p = 255 - alpha8[idx].to(torch.int32).reshape(n, hw)  # 255 m
        um[start : start + n, : 3 * hw] = q.reshape(n, 3 * hw) / 255.0
        um[start : start + n, 3 * hw :] = p / 255.0
        norm_u[start : start + n] = (q.long() ** 2).sum(dim=(1, 2)).double()
        u_dot_m[start : start + n] = (q.long() * p.long()[:, None, :]).sum(dim=2).double()
        norm_m[start : start + n] = (p.long() ** 2).sum(dim=1).double()
    scale = 255.0**2
    return um, norm_u / scale, u_dot_m / scale, norm_m / scale
