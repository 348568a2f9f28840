"""The bake views: cameras all around the Gaussians, and the Gaussians rendered from them.

The bake renders give the texture its colours, and their alpha and depth say which voxels are
seen to be empty (space carving, see extract). Camera directions are a Fibonacci sphere (even
coverage, the top and bottom included), looking at the centre of the object's bounding ball
from ``distance_ratio`` radii away with a 49 deg field of view: for a generated object (radius
~0.9) that is the training cameras' distance of 2.5. ``axis_alphas`` are the silhouettes along
the grid axes that choose the iso-level.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..cameras import Cameras, intrinsics, look_at
from ..render import render
from .density import Grid

FOV_Y_DEG = 49.0


@dataclass
class ViewRenders:
    """Renders of the Gaussians from the bake cameras."""

    cameras: Cameras
    rgb: Tensor  # [C, H, W, 3] premultiplied (over black)
    alpha: Tensor  # [C, H, W, 1]
    depth: Tensor  # [C, H, W, 1] expected camera-space depth


@torch.no_grad()
def axis_alphas(gaussians: Mapping[str, Tensor], grid: Grid) -> list[np.ndarray]:
    """The Gaussians' alpha seen along each grid axis, one pixel per voxel column.

    A (nearly) orthographic camera 1000 grid-widths away looks along axis a; pixel (i, j) is the
    ray through voxel column (j, i) of the other two axes (in increasing order), so the result
    [a] has the shape of ``grid.values.max(axis=a).T``."""
    g = {k: v.detach().float().cpu() for k, v in gaussians.items()}
    dims = np.array(grid.values.shape)
    centre = grid.origin + (dims - 1) * grid.h / 2.0
    dist = 1000.0 * grid.h * float(dims.max())
    out = []
    for a in range(3):
        o0, o1 = (k for k in range(3) if k != a)
        R = np.zeros((3, 3))
        R[0, o0], R[1, o1] = 1.0, 1.0
        R[2] = np.cross(R[0], R[1])  # a proper rotation; the camera looks along R[2]
        eye = centre - dist * R[2]
        viewmat = np.eye(4)
        viewmat[:3, :3], viewmat[:3, 3] = R, -R @ eye
        W, H = int(dims[o0]), int(dims[o1])
        f = dist / grid.h  # one pixel per voxel at the grid's centre
        K = np.array([[f, 0.0, W / 2.0], [0.0, f, H / 2.0], [0.0, 0.0, 1.0]])
        cam = Cameras(torch.tensor(viewmat[None], dtype=torch.float32),
                      torch.tensor(K[None], dtype=torch.float32), W, H)  # fmt: skip
        out.append(render(g, cam, torch.zeros(3), backend="auto").alpha[0, :, :, 0].numpy())
    return out


def fibonacci_directions(n: int) -> np.ndarray:
    """``n`` unit vectors [n, 3] spread evenly over the sphere (golden-angle spiral)."""
    i = np.arange(n) + 0.5
    z = 1.0 - 2.0 * i / n
    r = np.sqrt(np.clip(1.0 - z * z, 0.0, 1.0))
    phi = i * math.pi * (3.0 - math.sqrt(5.0))
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], 1)


def bake_cameras(
    center: np.ndarray, radius: float, n_views: int, resolution: int, distance_ratio: float = 2.8
) -> Cameras:
    """``n_views`` cameras on a sphere of ``distance_ratio * radius`` about ``center``."""
    c = torch.as_tensor(np.asarray(center, dtype=np.float32))
    eye = c + torch.from_numpy(fibonacci_directions(n_views)).float() * distance_ratio * radius
    fov = torch.full((n_views,), FOV_Y_DEG)
    return Cameras(look_at(eye, target=c), intrinsics(fov, resolution, resolution),
                   resolution, resolution)  # fmt: skip


@torch.no_grad()
def render_views(gaussians: Mapping[str, Tensor], cameras: Cameras, batch: int = 4) -> ViewRenders:
    """Render the Gaussians (on CPU) from every camera, a few views at a time."""
    g = {k: v.detach().float().cpu() for k, v in gaussians.items()}
    rgbs, alphas, depths = [], [], []
    for s in range(0, len(cameras), batch):
        out = render(g, cameras[s : s + batch], torch.zeros(3), backend="auto")
        rgbs.append(out.rgb)
        alphas.append(out.alpha)
        depths.append(out.depth)
    return ViewRenders(cameras, torch.cat(rgbs), torch.cat(alphas), torch.cat(depths))
