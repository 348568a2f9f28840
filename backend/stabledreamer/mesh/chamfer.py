"""Chamfer distance between an extracted mesh and a target mesh, as ``metrics.json`` reports it.

chamfer = (mean_{p in P} d(p, target surface) + mean_{q in Q} d(q, predicted surface)) / 2 / D

- P: ``n`` points uniform by area on the predicted mesh.
- Q: ``n`` points uniform by area on the target's *visible* surface: area samples kept only where
  a ray from one of ``n_views`` cameras around the target hits them first (their depth is within
  ``tolerance_px`` pixel footprints of the target's depth buffer), so the hidden faces inside
  overlapping parts do not count.
- d: exact point-to-triangle distance (not squared) to the nearest of the candidate triangles
  found through the ``k`` nearest of a dense set of surface samples.
- D: the diagonal of the target's bounding box.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.spatial import cKDTree

from ..cameras import Cameras, intrinsics, look_at
from ..targets.raster import render_mesh_depth
from ..targets.target_mesh import TargetMesh
from .views import FOV_Y_DEG, fibonacci_directions


def chamfer_distance(
    verts: np.ndarray,  # [V, 3] predicted mesh, the target's frame
    faces: np.ndarray,  # [F, 3]
    target: TargetMesh,
    n: int = 50_000,
    seed: int = 0,
    n_views: int = 40,
    resolution: int = 512,
) -> float:
    """The normalised Chamfer distance above (the target's normalised frame is fine: D scales)."""
    tv = target.vertices.double().numpy()
    tf = target.faces.numpy()
    rng = np.random.default_rng(seed)
    q = visible_surface_samples(target, n, rng, n_views=n_views, resolution=resolution)
    p, _ = area_samples(verts, faces, n, rng)
    d_pt = point_to_surface(p, tv, tf)
    d_tp = point_to_surface(q, verts, faces)
    diag = float(np.linalg.norm(tv.max(0) - tv.min(0)))
    return float(0.5 * (d_pt.mean() + d_tp.mean()) / diag)


def area_samples(
    verts: np.ndarray, faces: np.ndarray, n: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` points [n, 3] uniform by area, and their faces [n]."""
    a, b, c = (verts[faces[:, k]] for k in range(3))
    area = 0.5 * np.linalg.norm(np.cross(b - a, c - a), axis=1)
    face = rng.choice(len(faces), size=n, p=area / area.sum())
    r1, r2 = rng.random(n), rng.random(n)
    s = np.sqrt(r1)
    w0, w1, w2 = 1 - s, s * (1 - r2), s * r2
    pts = w0[:, None] * a[face] + w1[:, None] * b[face] + w2[:, None] * c[face]
    return pts, face


def visible_surface_samples(
    target: TargetMesh,
    n: int,
    rng: np.random.Generator,
    n_views: int = 40,
    resolution: int = 512,
    tolerance_px: float = 1.5,
) -> np.ndarray:
    """``n`` area-uniform points [n, 3] of the part of ``target`` seen from cameras around it."""
    verts = target.vertices.double().numpy()
    faces = target.faces.numpy()
    center = 0.5 * (verts.min(0) + verts.max(0))
    radius = float(np.linalg.norm(verts - center, axis=1).max())
    c = torch.from_numpy(center).float()
    eye = c + torch.from_numpy(fibonacci_directions(n_views)).float() * 2.8 * radius
    fov = torch.full((n_views,), FOV_Y_DEG)
    cams = Cameras(look_at(eye, target=c), intrinsics(fov, resolution, resolution),
                   resolution, resolution)  # fmt: skip
    depth = render_mesh_depth(target, cams)[..., 0].numpy()  # [C, H, W]
    out, have = [], 0
    for _ in range(8):  # draw until n visible points (a few rounds at most)
        pts, _ = area_samples(verts, faces, 2 * n, rng)
        vis = np.zeros(len(pts), bool)
        for k in range(n_views):
            R = cams.viewmats[k, :3, :3].double().numpy()
            t = cams.viewmats[k, :3, 3].double().numpy()
            K = cams.Ks[k].double().numpy()
            pc = pts @ R.T + t
            z = pc[:, 2]
            u = np.floor(K[0, 0] * pc[:, 0] / z + K[0, 2]).astype(np.int64)
            v = np.floor(K[1, 1] * pc[:, 1] / z + K[1, 2]).astype(np.int64)
            ok = (z > 0) & (u >= 0) & (u < resolution) & (v >= 0) & (v < resolution)
            zd = np.zeros(len(pts))
            zd[ok] = depth[k, v[ok], u[ok]]
            vis |= ok & (zd > 0) & (z <= zd + tolerance_px * z / K[0, 0])
        out.append(pts[vis])
        have += int(vis.sum())
        if have >= n:
            break
    pts = np.concatenate(out)
    return pts[rng.permutation(len(pts))[:n]]


def point_to_surface(
    points: np.ndarray, verts: np.ndarray, faces: np.ndarray, k: int = 16
) -> np.ndarray:
    """Distance [M] from each point to the mesh surface (see the module docstring). Candidates:
    the faces of the ``k`` nearest of 8 area samples per face (20k..400k in all) and every face's
    centroid, so each face is a candidate somewhere near it."""
    rng = np.random.default_rng(1)
    dense, dense_face = area_samples(verts, faces, int(np.clip(8 * len(faces), 2e4, 4e5)), rng)
    centroids = verts[faces].mean(1)
    samples = np.concatenate([dense, centroids])
    sample_face = np.concatenate([dense_face, np.arange(len(faces))])
    k = min(k, len(samples))
    _, idx = cKDTree(samples).query(points, k=k)
    cand = sample_face[idx.reshape(len(points), k)]  # [M, k]
    tri = verts[faces[cand]]  # [M, k, 3, 3]
    d = _point_triangle_distance(np.repeat(points[:, None], k, 1).reshape(-1, 3),
                                 tri.reshape(-1, 3, 3))  # fmt: skip
    return d.reshape(len(points), k).min(1)


def _point_triangle_distance(p: np.ndarray, tri: np.ndarray) -> np.ndarray:
    """Exact distance [M] from points [M, 3] to triangles [M, 3, 3] (Ericson, Real-Time
    Collision Detection 5.1.5: closest point by Voronoi region)."""
    a, b, c = tri[:, 0], tri[:, 1], tri[:, 2]
    ab, ac, ap = b - a, c - a, p - a
    d1, d2 = _dot(ab, ap), _dot(ac, ap)
    bp = p - b
    d3, d4 = _dot(ab, bp), _dot(ac, bp)
    cp = p - c
    d5, d6 = _dot(ab, cp), _dot(ac, cp)
    va = d3 * d6 - d5 * d4
    vb = d5 * d2 - d1 * d6
    vc = d1 * d4 - d3 * d2
    eps = 1e-30
    # Interior by default.
    denom = va + vb + vc
    denom = np.where(np.abs(denom) < eps, eps, denom)
    v = vb / denom
    w = vc / denom
    closest = a + ab * v[:, None] + ac * w[:, None]

    def put(mask, value):
        closest[mask] = value[mask]

    # Edge BC.
    m = (va <= 0) & ((d4 - d3) >= 0) & ((d5 - d6) >= 0)
    t = (d4 - d3) / np.maximum((d4 - d3) + (d5 - d6), eps)
    put(m, b + (c - b) * t[:, None])
    # Edge AC.
    m = (vb <= 0) & (d2 >= 0) & (d6 <= 0)
    t = d2 / np.maximum(d2 - d6, eps)
    put(m, a + ac * t[:, None])
    # Vertex C (Ericson tests A, B, AB, C, AC, BC in turn; here the later writes win).
    put((d6 >= 0) & (d5 <= d6), c)
    # Edge AB.
    m = (vc <= 0) & (d1 >= 0) & (d3 <= 0)
    t = d1 / np.maximum(d1 - d3, eps)
    put(m, a + ab * t[:, None])
    # Vertices B and A.
    put((d3 >= 0) & (d4 <= d3), b)
    put((d1 <= 0) & (d2 <= 0), a)
    return np.linalg.norm(p - closest, axis=1)


def _dot(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", x, y)
