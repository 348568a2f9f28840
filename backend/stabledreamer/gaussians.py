"""3D Gaussians as named tensors (gsplat's layout) and their initialisations.

Keys (N Gaussians, K = (sh_degree + 1)^2 - 1 higher-order SH coefficients):
    means      [N, 3]     world positions
    scales     [N, 3]     log of the standard deviations along the local axes
    quats      [N, 4]     rotation quaternion, w x y z, not necessarily normalised
    opacities  [N]        logit of opacity
    sh0        [N, 1, 3]  degree-0 spherical-harmonics colour coefficient
    shN        [N, K, 3]  higher-order coefficients (K may be 0)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

SH_C0 = 0.28209479177387814  # Y_0^0 = 1 / (2 sqrt(pi)); colour = SH_C0 * sh0 + 0.5 (3DGS)
KEYS = ("means", "scales", "quats", "opacities", "sh0", "shN")


def rgb_to_sh0(rgb: Tensor) -> Tensor:
    return (rgb - 0.5) / SH_C0


def sh0_to_rgb(sh0: Tensor) -> Tensor:
    return sh0 * SH_C0 + 0.5


def num_sh_bases(degree: int) -> int:
    return (degree + 1) ** 2


def sh_degree_of(gaussians: Mapping[str, Tensor]) -> int:
    k = 1 + gaussians["shN"].shape[1]
    degree = int(round(math.sqrt(k))) - 1
    if num_sh_bases(degree) != k:
        raise ValueError(f"shN holds {k - 1} coefficients; not a full SH degree")
    return degree


def count(gaussians: Mapping[str, Tensor]) -> int:
    return gaussians["means"].shape[0]


@dataclass
class InitConfig:
    """How the Gaussians start."""

    num_points: int = 5000
    """Initial count; GaussianDreamer and Gsgen start from a few thousand points."""
    radius: float = 0.5
    """Ball radius for the ``ball`` init (threestudio's gaussian splatting init radius 0.5)."""
    scale: float = 0.02
    """Initial standard deviation; overridden by the mean nearest-neighbour distance when that is
    smaller, as in 3DGS."""
    opacity: float = 0.1
    """Initial opacity (3DGS and gsplat's simple_trainer use 0.1)."""
    color: tuple[float, float, float] = (0.5, 0.5, 0.5)
    """Initial colour (sRGB) for inits that have none."""
    sh_degree: int = 0
    """Spherical-harmonics degree; 0 = view-independent albedo (what the mesh bake needs)."""


def from_points(
    points: Tensor,  # [N, 3]
    colors: Tensor | None = None,  # [N, 3] in [0, 1]
    cfg: InitConfig | None = None,
    scale: float | Tensor | None = None,
) -> dict[str, Tensor]:
    """Isotropic Gaussians at ``points`` with the configured opacity and colour."""
    cfg = cfg or InitConfig()
    points = torch.as_tensor(points, dtype=torch.float32)
    n = points.shape[0]
    if n == 0:
        raise ValueError("cannot initialise Gaussians from zero points")
    if colors is None:
        colors = torch.tensor(cfg.color, dtype=torch.float32).expand(n, 3)
    colors = torch.as_tensor(colors, dtype=torch.float32).clamp(0.0, 1.0)
    if scale is None:
        scale = min(cfg.scale, _mean_spacing(points))
    scale_t = torch.as_tensor(scale, dtype=torch.float32).expand(n)
    k = num_sh_bases(cfg.sh_degree) - 1
    quats = torch.zeros(n, 4)
    quats[:, 0] = 1.0
    return {
        "means": points.clone(),
        "scales": torch.log(scale_t)[:, None].repeat(1, 3).clone(),
        "quats": quats,
        "opacities": torch.full((n,), math.log(cfg.opacity / (1 - cfg.opacity))),
        "sh0": rgb_to_sh0(colors)[:, None, :].clone(),
        "shN": torch.zeros(n, k, 3),
    }


def init_ball(cfg: InitConfig, generator: torch.Generator) -> dict[str, Tensor]:
    """``cfg.num_points`` Gaussians uniform in a ball of ``cfg.radius``."""
    n = cfg.num_points
    direction = torch.nn.functional.normalize(torch.randn(n, 3, generator=generator), dim=-1)
    r = cfg.radius * torch.rand(n, 1, generator=generator) ** (1.0 / 3.0)
    return from_points(direction * r, cfg=cfg)


def init_from_mesh(mesh, cfg: InitConfig, seed: int = 0) -> dict[str, Tensor]:
    """Gaussians sampled on a trimesh surface (the 'start from my blockout' path)."""
    import trimesh

    if len(mesh.faces) == 0:
        raise ValueError("the mesh has no faces to sample from")
    points, _ = trimesh.sample.sample_surface_even(mesh, cfg.num_points, seed=seed)
    if len(points) < cfg.num_points // 2:  # sample_surface_even can reject many; top up
        points, _ = trimesh.sample.sample_surface(mesh, cfg.num_points, seed=seed)
    return from_points(torch.as_tensor(np.asarray(points), dtype=torch.float32), cfg=cfg)


def _mean_spacing(points: Tensor, sample: int = 2048) -> float:
    """Mean distance to the 3 nearest neighbours over a subsample (3DGS's initial scale)."""
    if points.shape[0] < 4:
        return float("inf")
    idx = torch.randperm(points.shape[0], generator=torch.Generator().manual_seed(0))[:sample]
    queries = points[idx]
    best = None  # the 4 smallest distances so far, per query; blocks bound the memory
    for start in range(0, points.shape[0], SPACING_BLOCK):
        d = torch.cdist(queries, points[start : start + SPACING_BLOCK])
        if best is not None:
            d = torch.cat([best, d], dim=1)
        best = d.topk(min(4, d.shape[1]), largest=False).values
    return float(best[:, 1:].mean().clamp_min(1e-4))


SPACING_BLOCK = 32_768
"""Points per distance block: 2,048 queries x 32,768 x 4 bytes = 256 MiB at most, whatever the
point count (the whole cloud at once was 8 GB for a million points)."""


def activated(gaussians: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Physical values: scales [N,3], unit quats [N,4], opacities [N] in (0,1), rgb [N,3]."""
    return {
        "means": gaussians["means"],
        "scales": torch.exp(gaussians["scales"]),
        "quats": torch.nn.functional.normalize(gaussians["quats"], dim=-1),
        "opacities": torch.sigmoid(gaussians["opacities"]),
        "rgb": sh0_to_rgb(gaussians["sh0"][:, 0, :]).clamp(0.0, 1.0),
    }


def detached(gaussians: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in gaussians.items()}
