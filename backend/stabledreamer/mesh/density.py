"""Opacity-weighted Gaussian density on a voxel grid, evaluated only near each Gaussian.

D(x) = sum_i o_i' exp(-1/2 (x - mu_i)^T Sigma_i'^-1 (x - mu_i)), summed over the voxels inside
each Gaussian's 3-sigma bounding box (never all Gaussians x all voxels). Sigma' = Sigma +
(filter_voxels * h)^2 I widens every Gaussian by a 3D low-pass filter of half a voxel and
o_i' = o_i sqrt(det Sigma / det Sigma') keeps its integral (the 3D filter of Mip-Splatting): a flat
surfel thinner than a voxel still leaves a continuous sheet on the grid instead of aliasing
between voxel centres, and a dense sheet of overlapping surfels does not swell by the filter.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .. import gaussians as G
from ..render.projection import rotation_components
from .errors import MeshError


@dataclass
class Grid:
    """A cubic-voxel grid: voxel (i, j, k) has its centre at ``origin + (i, j, k) * h``."""

    values: np.ndarray  # [Nx, Ny, Nz] float32 density at voxel centres
    origin: np.ndarray  # [3] float64 centre of voxel (0, 0, 0)
    h: float  # voxel edge length

    def to_world(self, ijk: np.ndarray) -> np.ndarray:
        """Grid coordinates [..., 3] (fractional voxel indices) to world positions."""
        return self.origin + np.asarray(ijk, dtype=np.float64) * self.h


def opaque_mask(gaussians: Mapping[str, Tensor], min_opacity: float) -> Tensor:
    """Gaussians [N] bool that are opaque enough to matter and finite."""
    o = torch.sigmoid(gaussians["opacities"].float())
    finite = torch.isfinite(gaussians["means"]).all(1) & torch.isfinite(gaussians["scales"]).all(1)
    return (o >= min_opacity) & finite & torch.isfinite(o)


def grid_bounds(
    means: Tensor,  # [N, 3]
    sigma_max: Tensor,  # [N] largest standard deviation
    quantile: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Robust box (lo, hi) [3]: per-axis quantiles of the means, widened by 3 sigma and 5%."""
    m = means.double()
    if m.shape[0] > 2_000_000:  # torch.quantile's input limit
        m = m[torch.randperm(m.shape[0], generator=torch.Generator().manual_seed(0))[:2_000_000]]
    lo = torch.quantile(m, quantile, dim=0).numpy()
    hi = torch.quantile(m, 1.0 - quantile, dim=0).numpy()
    pad = 3.0 * float(torch.quantile(sigma_max.double(), 0.99)) + 0.05 * float((hi - lo).max())
    return lo - pad, hi + pad


def density_grid(
    gaussians: Mapping[str, Tensor],
    resolution: int,
    *,
    min_opacity: float = 0.02,
    bounds_quantile: float = 1e-3,
    filter_voxels: float = 0.5,
    max_radius_voxels: int = 16,
    chunk_pairs: int = 4_000_000,
) -> Grid:
    """The density of the opaque Gaussians on a grid with ``resolution`` voxels along its longest
    side. Gaussians outside the robust bounds (far floaters) are left out; a Gaussian's support is
    cut at ``max_radius_voxels`` voxels from its centre (huge Gaussians are rare and faint)."""
    keep = opaque_mask(gaussians, min_opacity)
    if not bool(keep.any()):
        raise MeshError(
            f"no Gaussian has opacity >= {min_opacity}; the file is empty or fully transparent"
        )
    act = G.activated({k: v.detach().float().cpu()[keep] for k, v in gaussians.items()})
    means, scales, quats, opac = act["means"], act["scales"], act["quats"], act["opacities"]
    lo, hi = grid_bounds(means, scales.max(1).values, bounds_quantile)
    h = float((hi - lo).max()) / max(int(resolution) - 1, 1)
    if not h > 0:
        raise MeshError("all Gaussians sit at one point; there is no surface to mesh")
    dims = np.maximum(np.ceil((hi - lo) / h).astype(np.int64) + 1, 2)
    origin = lo.astype(np.float64)

    # Covariance (filtered) and its inverse, per Gaussian.
    R = torch.stack(rotation_components(quats), -1).view(-1, 3, 3)  # [N, 3, 3]
    cov = (R * scales[:, None, :] ** 2) @ R.transpose(1, 2)  # [N, 3, 3]
    det0 = torch.linalg.det(cov.double()).clamp_min(0)
    cov = cov + (filter_voxels * h) ** 2 * torch.eye(3)
    opac = opac * torch.sqrt(det0 / torch.linalg.det(cov.double())).float()  # integral kept
    prec = torch.linalg.inv(cov.double()).float()  # [N, 3, 3]
    radius = 3.0 * torch.sqrt(torch.diagonal(cov, dim1=1, dim2=2))  # [N, 3] world units

    g = (means.double() - torch.from_numpy(origin)) / h  # [N, 3] grid coordinates
    r_vox = (radius.double() / h).clamp(max=max_radius_voxels)
    dims_t = torch.from_numpy(dims)
    lo_i = torch.ceil(g - r_vox).long().clamp(min=0)
    hi_i = torch.floor(g + r_vox).long()
    hi_i = torch.minimum(hi_i, dims_t - 1)
    n_axis = (hi_i - lo_i + 1).clamp(min=0)  # [N, 3]
    counts = n_axis.prod(1)  # [N]
    values = torch.zeros(int(dims.prod()), dtype=torch.float32)
    stride = torch.tensor([dims[1] * dims[2], dims[2], 1], dtype=torch.int64)
    # Chunks of whole Gaussians with about ``chunk_pairs`` (Gaussian, voxel) pairs each.
    csum = torch.cumsum(counts, 0)
    start = 0
    n = counts.shape[0]
    while start < n:
        base = int(csum[start - 1]) if start else 0
        end = int(torch.searchsorted(csum, base + chunk_pairs, right=True))
        end = min(max(end, start + 1), n)
        sl = slice(start, end)
        _splat_chunk(values, g[sl], lo_i[sl], n_axis[sl], counts[sl], prec[sl], opac[sl], h,
                     stride)  # fmt: skip
        start = end
    return Grid(values.view(*dims.tolist()).numpy(), origin, h)


def _splat_chunk(values, g, lo_i, n_axis, counts, prec, opac, h, stride) -> None:
    total = int(counts.sum())
    if total == 0:
        return
    gid = torch.repeat_interleave(torch.arange(counts.shape[0]), counts)  # [P]
    starts = torch.cumsum(counts, 0) - counts
    local = torch.arange(total) - starts[gid]  # index inside each Gaussian's box
    ny, nz = n_axis[gid, 1], n_axis[gid, 2]
    iz = local % nz
    rest = torch.div(local, nz, rounding_mode="floor")
    iy = rest % ny
    ix = torch.div(rest, ny, rounding_mode="floor")
    ijk = torch.stack([ix, iy, iz], 1) + lo_i[gid]  # [P, 3] voxel indices
    d = (ijk.double() - g[gid]).float() * h  # [P, 3] offset from the mean, world units
    P = prec[gid]  # [P, 3, 3]
    m = (
        P[:, 0, 0] * d[:, 0] ** 2
        + P[:, 1, 1] * d[:, 1] ** 2
        + P[:, 2, 2] * d[:, 2] ** 2
        + 2.0 * (P[:, 0, 1] * d[:, 0] * d[:, 1] + P[:, 0, 2] * d[:, 0] * d[:, 2]
                 + P[:, 1, 2] * d[:, 1] * d[:, 2])
    )  # fmt: skip
    w = opac[gid] * torch.exp(-0.5 * m)
    inside = m < 9.0
    flat = (ijk * stride).sum(1)
    values.index_add_(0, flat[inside], w[inside])
