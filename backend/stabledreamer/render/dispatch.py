"""``render``: one pure function from Gaussians and cameras to images, with a named rasteriser.

Every path follows gsplat 1.5.3's "classic" rasterisation: eps2d 0.3, near plane 0.01,
opacity-aware extent, alpha = min(0.999, o exp(-sigma)), pairs with alpha < 1/255 skipped,
transmittance early stop at 1e-4, colours ``max(SH(dir) + 0.5, 0)``, expected depth
``sum w z / alpha``. ``meta`` is what ``gsplat.strategy.DefaultStrategy`` reads (packed=False).

The path is an argument (``backend``, see ``render.backend``): ``gsplat`` (CUDA kernels),
``native`` (the C++ CPU kernel, ``raster_native``), ``torch`` (``projection`` + ``raster_torch``,
on the CPU or on CUDA tensors), or ``auto``, resolved from the tensors' device and which kernels
are there. A run resolves its backend once (``resolve_backend``) and passes the concrete name.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import torch
from torch import Tensor

from ..cameras import Cameras
from ..gaussians import SH_C0, sh_degree_of
from . import raster_native
from .backend import BACKENDS, RenderBackendError, resolve_backend
from .projection import EPS2D, NEAR_PLANE, project
from .raster_torch import rasterize


class RenderOutput(NamedTuple):
    rgb: Tensor  # [C, H, W, 3]
    alpha: Tensor  # [C, H, W, 1]
    depth: Tensor  # [C, H, W, 1] expected depth, 0 where alpha == 0
    meta: dict  # means2d [C, N, 2] (retain_grad), radii [C, N, 2] int, depths [C, N], sizes


def render(
    gaussians: Mapping[str, Tensor],  # gaussians.py layout (raw parameters)
    cameras: Cameras,
    background: Tensor,  # [3] or [C, 3]
    *,
    backend: str = "auto",
) -> RenderOutput:
    """Render C views with ``backend`` (gsplat | native | torch | auto, see ``render.backend``)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    means = gaussians["means"]
    if backend == "auto":
        backend = resolve_backend("auto", means.device, means.dtype)
    if backend == "gsplat":
        if not means.is_cuda:
            raise RenderBackendError("backend='gsplat' needs CUDA tensors; use native or torch")
        return _render_gsplat(gaussians, cameras, background)
    if backend == "native" and means.is_cuda:
        raise RenderBackendError("backend='native' needs CPU tensors; use gsplat or torch")
    return _render_raster(gaussians, cameras, background, native=backend == "native")


def _backgrounds(background: Tensor, n_cams: int, like: Tensor) -> Tensor:
    bg = torch.as_tensor(background, dtype=like.dtype, device=like.device)
    if bg.shape not in ((3,), (n_cams, 3)):
        raise ValueError(f"background must be [3] or [C, 3] (C={n_cams}); got {tuple(bg.shape)}")
    return bg.expand(n_cams, 3)  # [C, 3]


def gaussian_colors(gaussians: Mapping[str, Tensor], viewmats: Tensor) -> Tensor:
    """RGB [N, 3] (degree 0) or [C, N, 3] (view-dependent SH), clamped at 0 like gsplat."""
    degree = sh_degree_of(gaussians)
    sh0 = gaussians["sh0"]  # [N, 1, 3]
    if degree == 0:
        return torch.clamp_min(sh0[:, 0] * SH_C0 + 0.5, 0.0)
    from gsplat.cuda._torch_impl import _spherical_harmonics

    campos = torch.linalg.inv(viewmats)[:, :3, 3]  # [C, 3]
    dirs = gaussians["means"][None] - campos[:, None]  # [C, N, 3]
    coeffs = torch.cat([sh0, gaussians["shN"]], 1)  # [N, K, 3]
    coeffs = coeffs[None].expand(dirs.shape[0], *coeffs.shape)  # [C, N, K, 3]
    return torch.clamp_min(_spherical_harmonics(degree, dirs, coeffs) + 0.5, 0.0)


def _render_raster(gaussians, cameras: Cameras, background: Tensor, native: bool) -> RenderOutput:
    """The project's rasterisers: the C++ kernel (CPU) or pure torch (CPU or CUDA tensors)."""
    means = gaussians["means"]  # [N, 3]
    C, N, H, W = len(cameras), means.shape[0], cameras.height, cameras.width
    viewmats = cameras.viewmats.to(means)
    opacities = torch.sigmoid(gaussians["opacities"])  # [N]
    project_fn = raster_native.project if native else project
    proj = project_fn(means, gaussians["quats"], torch.exp(gaussians["scales"]), opacities,
                      viewmats, cameras.Ks.to(means), W, H)  # fmt: skip
    means2d = proj.means2d  # [C, N, 2]
    if means2d.requires_grad:
        means2d.retain_grad()
    colors = gaussian_colors(gaussians, viewmats)  # [N, 3] or [C, N, 3]
    if native:
        sums = raster_native.rasterize(means2d, proj.conics, opacities, colors, proj.depths,
                                       proj.radii, H, W)  # fmt: skip
    else:
        sums = _rasterize_torch(proj, opacities, colors.expand(C, N, 3), C, H, W)
    alpha = sums[..., 4:]  # [C, H, W, 1]
    bg = _backgrounds(background, C, means)[:, None, None, :]  # [C, 1, 1, 3]
    rgb = sums[..., :3] + (1.0 - alpha) * bg
    depth = sums[..., 3:4] / alpha.clamp_min(1e-10)
    meta = {
        "means2d": means2d,
        "radii": proj.radii,
        "depths": proj.depths,
        "conics": proj.conics,
        "width": W,
        "height": H,
        "n_cameras": C,
        "gaussian_ids": None,
        "camera_ids": None,
    }
    return RenderOutput(rgb, alpha, depth, meta)


def _rasterize_torch(proj, opacities: Tensor, colors: Tensor, C: int, H: int, W: int) -> Tensor:
    """Pixel sums [C, H, W, 5] with the pure-torch sparse rasteriser (raster_torch)."""
    N = opacities.shape[0]
    # Visible (camera, Gaussian) entries, front to back (one global depth order is enough:
    # pixels of different cameras never share a segment).
    with torch.no_grad():
        flat = proj.valid.reshape(-1).nonzero()[:, 0]  # [M] into C*N
        flat = flat[torch.argsort(proj.depths.reshape(-1)[flat], stable=True)]
    opac = opacities[None, :, None].expand(C, N, 1)
    geom = torch.cat([proj.means2d, proj.conics, opac], -1).reshape(C * N, 6).index_select(0, flat)
    feats = torch.cat([colors, proj.depths[..., None]], -1).reshape(C * N, 4).index_select(0, flat)
    if geom.is_cuda:
        # raster_torch composites on the CPU (its chunking reads sizes back on every chunk):
        # the CUDA tensors go there and back through autograd-aware copies, so the gradients
        # and ``meta`` (means2d's retained grad) stay on the GPU for the optimizer and strategy.
        sums = rasterize(geom.cpu(), feats.cpu(), (flat // N).cpu(), C, H, W)
        return sums.to(geom.device).view(C, H, W, 5)
    return rasterize(geom, feats, flat // N, C, H, W).view(C, H, W, 5)


def _render_gsplat(gaussians, cameras: Cameras, background: Tensor) -> RenderOutput:
    import gsplat

    means = gaussians["means"]
    C = len(cameras)
    degree = sh_degree_of(gaussians)
    colors = torch.cat([gaussians["sh0"], gaussians["shN"]], 1)  # [N, K, 3]
    bg = _backgrounds(background, C, means)
    out, alpha, meta = gsplat.rasterization(
        means, gaussians["quats"], torch.exp(gaussians["scales"]),
        torch.sigmoid(gaussians["opacities"]), colors,
        cameras.viewmats.to(means), cameras.Ks.to(means), cameras.width, cameras.height,
        near_plane=NEAR_PLANE, eps2d=EPS2D, sh_degree=degree, packed=False,
        rasterize_mode="classic", render_mode="RGB+ED", backgrounds=bg,
    )  # fmt: skip
    depth = torch.where(alpha > 0, out[..., 3:4], torch.zeros_like(alpha))
    return RenderOutput(out[..., :3], alpha, depth, meta)
