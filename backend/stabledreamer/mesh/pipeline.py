"""The mesh step in order: grid, iso-level, marching cubes, cleanup, decimation, UVs, bake."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Mapping

import numpy as np
import torch
from torch import Tensor

from .. import gaussians as G
from .bake import bake_texture, vertex_normals
from .config import MeshConfig
from .density import Grid, density_grid, opaque_mask
from .errors import MeshError
from .extract import (
    decimate,
    fill_cavities,
    marching_cubes,
    remove_floaters,
    seen_empty,
    silhouette_level,
)
from .result import TexturedMesh
from .unwrap import unwrap
from .views import axis_alphas, bake_cameras, render_views


def gaussians_to_mesh(
    gaussians: Mapping[str, Tensor], cfg: MeshConfig | None = None
) -> TexturedMesh:
    """The textured surface of ``gaussians`` (gaussians.py layout), in their own frame."""
    cfg = cfg or MeshConfig()
    cfg.validate()
    with torch_threads(cfg.threads):
        return _mesh(gaussians, cfg)


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run with ``n`` torch threads (0: unchanged), then restore the previous count."""
    before = torch.get_num_threads()
    if n > 0:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _mesh(gaussians: Mapping[str, Tensor], cfg: MeshConfig) -> TexturedMesh:
    if G.count(gaussians) == 0:
        raise MeshError("the file holds no Gaussians")
    g = {k: v.detach().float().cpu() for k, v in gaussians.items()}
    timings: dict[str, float] = {}
    clock = [time.perf_counter()]

    def lap(name: str) -> None:
        now = time.perf_counter()
        timings[name] = round(now - clock[0], 3)
        clock[0] = now

    grid = density_grid(g, cfg.grid, min_opacity=cfg.min_opacity, filter_voxels=cfg.filter_voxels)
    lap("grid")
    level = silhouette_level(grid, axis_alphas(g, grid), cfg.level_fraction)
    center, radius = _object_ball(g, cfg.min_opacity)
    views = render_views(g, bake_cameras(center, radius, cfg.views, cfg.view_resolution))
    lap("render")
    empty = seen_empty(grid, views, tolerance=2.0 * grid.h)
    filled = Grid(fill_cavities(grid.values, level, empty), grid.origin, grid.h)
    verts, faces = marching_cubes(filled, level)
    lap("marching_cubes")
    verts, faces = remove_floaters(verts, faces, cfg.min_component_ratio)
    lap("cleanup")
    verts, faces = decimate(verts, faces, cfg.faces)
    verts, faces = remove_floaters(verts, faces, cfg.min_component_ratio)  # collapsed slivers
    lap("decimation")
    normals = vertex_normals(verts, faces)  # before the seam split, so seams stay smooth
    vmap, faces, uvs = unwrap(verts, faces, cfg.texture_size, cfg.uv_padding)
    verts, normals = verts[vmap], normals[vmap]
    lap("unwrap")
    texture = bake_texture(
        verts, faces, uvs, normals, cfg.texture_size, views, g, depth_tolerance=2.0 * grid.h
    )
    lap("bake")
    return TexturedMesh(verts, faces, uvs, normals, texture, timings, level)


def _object_ball(gaussians: Mapping[str, Tensor], min_opacity: float) -> tuple[np.ndarray, float]:
    """Centre and radius of the opaque Gaussians, robustly: the box of their 0.1%..99.9%
    quantiles, the 99.9% quantile of their distance from its centre, plus two sigmas."""
    keep = opaque_mask(gaussians, min_opacity)
    means = gaussians["means"][keep].double()[:2_000_000]  # torch.quantile's input limit
    sigma = torch.exp(gaussians["scales"][keep]).max(1).values.double()[:2_000_000]
    center = 0.5 * (torch.quantile(means, 1e-3, dim=0) + torch.quantile(means, 1 - 1e-3, dim=0))
    r = torch.quantile((means - center).norm(dim=1), 0.999) + 2.0 * torch.quantile(sigma, 0.99)
    return center.numpy(), float(r)
