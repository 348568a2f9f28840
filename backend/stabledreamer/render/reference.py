"""Dense reference renderer: every Gaussian against every pixel, float64, plain autograd.

Same semantics as ``render`` (gsplat classic), written to be obviously right rather than fast:
gsplat's pure-torch projection, then per camera an [n, H*W] alpha matrix composited front to back
with ``cumprod``. For tests and benchmarks only (memory grows as N x H x W).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from gsplat.cuda._torch_impl import _fully_fused_projection, _quat_scale_to_covar_preci
from torch import Tensor

from ..cameras import Cameras
from .dispatch import RenderOutput, gaussian_colors

ALPHA_MIN, ALPHA_MAX, T_MIN = 1.0 / 255.0, 0.999, 1e-4


def render_reference(
    gaussians: Mapping[str, Tensor],  # gaussians.py layout
    cameras: Cameras,
    background: Tensor,  # [3] or [C, 3]
) -> RenderOutput:
    """Dense float64 render; ``meta["means2d"]`` [C, N, 2] retains its gradient."""
    g = {k: v.to(torch.float64) for k, v in gaussians.items()}
    C, H, W = len(cameras), cameras.height, cameras.width
    viewmats, Ks = cameras.viewmats.double(), cameras.Ks.double()
    covars, _ = _quat_scale_to_covar_preci(g["quats"], torch.exp(g["scales"]), True, False)
    radii, means2d, depths, conics, _ = _fully_fused_projection(
        g["means"], covars, viewmats, Ks, W, H, eps2d=0.3, near_plane=0.01
    )  # [C, N, 2], [C, N, 2], [C, N], [C, N, 3]
    if means2d.requires_grad:
        means2d.retain_grad()
    opac = torch.sigmoid(g["opacities"])  # [N]
    colors = gaussian_colors(g, viewmats).expand(C, -1, 3)  # [C, N, 3]
    bg = torch.as_tensor(background, dtype=torch.float64).expand(C, 3)
    ys, xs = torch.meshgrid(
        torch.arange(H, dtype=torch.float64) + 0.5,
        torch.arange(W, dtype=torch.float64) + 0.5,
        indexing="ij",
    )
    pix = torch.stack([xs.reshape(-1), ys.reshape(-1)], -1)  # [H*W, 2]
    rgbs, alphas, dep = [], [], []
    for c in range(C):
        ids = ((radii[c] > 0).all(-1) & (opac >= ALPHA_MIN)).nonzero()[:, 0]
        ids = ids[torch.argsort(depths[c, ids], stable=True)]  # front to back
        d = pix[None] - means2d[c, ids][:, None]  # [n, H*W, 2]
        a, b, cc = conics[c, ids].unbind(-1)  # [n]
        sigma = (0.5 * (a[:, None] * d[..., 0] ** 2 + cc[:, None] * d[..., 1] ** 2)
                 + b[:, None] * d[..., 0] * d[..., 1])  # fmt: skip
        alpha = torch.clamp(opac[ids, None] * torch.exp(-sigma), max=ALPHA_MAX)  # [n, H*W]
        alpha = torch.where((alpha >= ALPHA_MIN) & (sigma >= 0), alpha, torch.zeros_like(alpha))
        with torch.no_grad():  # a pixel stops before the Gaussian that takes T to <= 1e-4
            keep = torch.cumprod(1 - alpha, 0) > T_MIN
        alpha = alpha * keep
        trans = torch.cumprod(torch.cat([torch.ones_like(alpha[:1]), 1 - alpha[:-1]]), 0)
        w = alpha * trans  # [n, H*W]
        acc = w.sum(0)[:, None]  # [H*W, 1]
        rgbs.append(w.T @ colors[c, ids] + (1 - acc) * bg[c])
        alphas.append(acc)
        dep.append((w.T @ depths[c, ids, None]) / acc.clamp_min(1e-10))
    shape = (C, H, W, -1)
    meta = {"means2d": means2d, "radii": radii, "depths": depths, "width": W, "height": H,
            "n_cameras": C, "gaussian_ids": None}  # fmt: skip
    return RenderOutput(torch.stack(rgbs).view(shape), torch.stack(alphas).view(shape),
                        torch.stack(dep).view(shape), meta)  # fmt: skip
