"""Density grid -> clean mesh: iso-level, cavity fill, marching cubes, floaters, decimation.

Iso-level (``silhouette_level``): the level whose silhouettes match the Gaussians' own. Along each
grid axis, a voxel column is inside the level-L surface's silhouette exactly when the largest
density in that column exceeds L; the Gaussians, rendered along the same axis with one pixel per
column, cover it when their alpha exceeds 0.5. L is the value that makes these two agree on the
most columns (a 1D threshold search over every column of the three axis views). It needs no
absolute density scale, so it does not depend on how many Gaussians overlap or how opaque they
are, and silhouettes are what a viewer sees: a level too high erodes thin parts, one too low
fattens everything, and both show up as disagreement.
"""

from __future__ import annotations

import numpy as np
import torch
import trimesh
from scipy import ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from .density import Grid
from .errors import MeshError
from .views import ViewRenders


def silhouette_level(grid: Grid, alphas: list[np.ndarray], level_fraction: float = 1.0) -> float:
    """The iso-level (see the module docstring), times ``level_fraction``. ``alphas[a]`` is the
    Gaussians' alpha along axis a, shaped like ``grid.values.max(axis=a).T``."""
    m = np.concatenate([grid.values.max(axis=a).T.ravel() for a in range(3)])
    inside = np.concatenate([a.ravel() for a in alphas]) > 0.5
    if inside.sum() < 4:
        raise MeshError(
            "the Gaussians cover almost nothing (alpha > 0.5 nowhere); the file is empty or "
            "transparent"
        )
    order = np.argsort(m, kind="stable")
    ms, ins = m[order], inside[order]
    # Threshold just below ms[k]: columns 0..k-1 outside, k.. inside.
    missed = np.concatenate([[0], np.cumsum(ins)])  # inside columns called outside
    extra = (~ins).sum() - np.concatenate([[0], np.cumsum(~ins)])  # outside called inside
    k = int(np.argmin(missed + extra))
    lo = ms[k - 1] if k > 0 else 0.0
    hi = ms[k] if k < len(ms) else ms[-1]
    level = level_fraction * 0.5 * float(lo + hi)
    if not level > 0:
        raise MeshError("the Gaussians' density is zero where they render; nothing to mesh")
    return level


def fill_cavities(
    values: np.ndarray, level: float, seen_empty: np.ndarray | None = None, close_voxels: int = 2
) -> np.ndarray:
    """Raise the voxels inside the object above ``level``, so marching cubes makes its outside
    surface only (no hidden inner copy of a shell of Gaussians, even a porous one).

    Inside = below ``level`` and not ``seen_empty`` (no bake view sees through the voxel, see
    ``seen_empty``), or enclosed by the level-``level`` surface once holes up to about
    ``2 * close_voxels`` voxels wide are closed (a morphological closing)."""
    occupied = values > level
    pad = close_voxels + 1
    closed = np.pad(occupied, pad)
    if close_voxels > 0:
        closed = ndimage.binary_closing(closed, iterations=close_voxels)
    inside = ndimage.binary_fill_holes(closed)[pad:-pad, pad:-pad, pad:-pad] & ~occupied
    if seen_empty is not None:
        inside |= ~seen_empty & ~occupied
    if not inside.any():
        return values
    out = values.copy()
    out[inside] = np.maximum(out[inside], 2.0 * level)
    return out


@torch.no_grad()
def seen_empty(
    grid: Grid,
    views: ViewRenders,
    tolerance: float,
    tolerance_px: float = 2.0,
    min_views: int = 2,
) -> np.ndarray:
    """Voxels [Nx, Ny, Nz] that at least ``min_views`` views see as empty (space carving with the
    Gaussians' own renders): their pixel is transparent (alpha < 0.5), or it is opaque
    (alpha >= 0.9, so its expected depth is a surface) and its surface lies behind them by more
    than ``tolerance`` (world units) plus ``tolerance_px`` pixel footprints. One view alone is not
    trusted: a pixel where a thin spot lets some light through has a depth far too deep."""
    dims = grid.values.shape
    axes = [torch.arange(n, dtype=torch.float32) * grid.h + float(o) for n, o in
            zip(dims, grid.origin, strict=True)]  # fmt: skip
    pts = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)  # [N, 3]
    cams = views.cameras
    H, W = cams.height, cams.width
    images = torch.cat([views.alpha, views.depth], -1).reshape(len(cams), H * W, 2)
    votes = torch.zeros(pts.shape[0], dtype=torch.int16)
    for c in range(len(cams)):  # few large operations per view (cheap on a busy CPU too)
        R, t, K = cams.viewmats[c, :3, :3], cams.viewmats[c, :3, 3], cams.Ks[c]
        p = torch.addmm(t, pts, R.T)  # camera space
        z = p[:, 2].clamp_min(1e-6)
        u = torch.floor(K[0, 0] * p[:, 0] / z + K[0, 2])
        v = torch.floor(K[1, 1] * p[:, 1] / z + K[1, 2])
        ok = (p[:, 2] > 0) & (u >= 0) & (u < W) & (v >= 0) & (v < H)
        pix = (v.clamp(0, H - 1) * W + u.clamp(0, W - 1)).long()
        ad = images[c].index_select(0, pix)  # [N, 2] alpha, depth
        tol = tolerance + tolerance_px / K[0, 0] * z
        votes += ok & ((ad[:, 0] < 0.5) | ((ad[:, 0] >= 0.9) & (z < ad[:, 1] - tol)))
    return (votes >= min(min_views, len(cams))).view(dims).numpy()


def marching_cubes(grid: Grid, level: float) -> tuple[np.ndarray, np.ndarray]:
    """Triangles of the ``level`` set in world coordinates, outward-facing (density inside)."""
    import mcubes

    vol = np.pad(grid.values, 1)  # zeros around: surfaces at the border close
    verts, faces = mcubes.marching_cubes(vol.astype(np.float64), float(level))
    if len(faces) == 0:
        raise MeshError("no surface at the chosen density level; the Gaussians are too sparse")
    verts = grid.to_world(verts - 1.0)
    faces = np.asarray(faces, dtype=np.int64)
    # PyMCubes orients triangles towards higher values; we want normals pointing outwards.
    if _signed_volume(verts, faces) < 0:
        faces = faces[:, ::-1].copy()
    return verts, faces


def remove_floaters(
    verts: np.ndarray, faces: np.ndarray, min_area_ratio: float
) -> tuple[np.ndarray, np.ndarray]:
    """Drop connected components whose area is below ``min_area_ratio`` x the largest one's."""
    n = len(verts)
    edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]]])
    adj = coo_matrix((np.ones(len(edges), np.int8), (edges[:, 0], edges[:, 1])), shape=(n, n))
    _, label = connected_components(adj, directed=False)
    face_label = label[faces[:, 0]]
    area = _face_areas(verts, faces)
    comp_area = np.bincount(face_label, weights=area)
    keep = comp_area[face_label] >= min_area_ratio * comp_area.max()
    return _compact(verts, faces[keep])


def decimate(
    verts: np.ndarray, faces: np.ndarray, face_target: int
) -> tuple[np.ndarray, np.ndarray]:
    """Quadric decimation (fast-simplification through trimesh) down to ``face_target`` faces."""
    if len(faces) <= face_target:
        return verts, faces
    mesh = trimesh.Trimesh(verts, faces, process=False)
    out = mesh.simplify_quadric_decimation(face_count=int(face_target))
    v, f = np.asarray(out.vertices, np.float64), np.asarray(out.faces, np.int64)
    # Collapses can leave back-to-back pairs of faces on the same three vertices: drop both.
    _, inverse, counts = np.unique(np.sort(f, axis=1), axis=0, return_inverse=True,
                                   return_counts=True)  # fmt: skip
    keep = (_face_areas(v, f) > 0) & (counts[inverse.reshape(-1)] == 1)
    return _compact(v, f[keep])


def _face_areas(verts: np.ndarray, faces: np.ndarray) -> np.ndarray:
    a, b, c = verts[faces[:, 0]], verts[faces[:, 1]], verts[faces[:, 2]]
    return 0.5 * np.linalg.norm(np.cross(b - a, c - a), axis=1)


def _signed_volume(verts: np.ndarray, faces: np.ndarray) -> float:
    a, b, c = verts[faces[:, 0]], verts[faces[:, 1]], verts[faces[:, 2]]
    return float(np.einsum("ij,ij->i", a, np.cross(b, c)).sum() / 6.0)


def _compact(verts: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Drop vertices no face uses."""
    used, inverse = np.unique(faces.reshape(-1), return_inverse=True)
    return verts[used], inverse.reshape(-1, 3).astype(np.int64)
