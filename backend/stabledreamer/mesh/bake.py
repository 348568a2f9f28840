"""Base-colour texture from the Gaussians: multi-view renders back-projected onto the texels.

1. Texels: the mesh is rasterised in UV space (the project's exact triangle rasteriser with an
   identity camera), giving every covered texel centre its face and barycentrics, hence a 3D
   point and a smooth normal.
2. Back-projection: each texel point is projected into the ``views_per_face`` bake views that
   face its triangle best. It counts where it is visible there: its depth is within
   ``depth_tolerance`` (world units) plus ``depth_tolerance_px`` pixel footprints of the
   Gaussians' rendered (expected) depth, near which the mesh lies. It is weighted by
   ``cos(view angle) ** cos_power`` (frontal views dominate, grazing ones hardly count). Colours
   are sampled bilinearly from the renders over black and un-premultiplied through the weighted
   alpha, so silhouette pixels do not bring background in.
3. Texels no view sees (deep creases, the underside of a flat base) take the colour of the nearest
   opaque Gaussians (inverse-distance weights over ``knn`` of them).
4. Seams: every texel outside the charts copies the nearest chart texel (an exact Euclidean
   distance transform), so bilinear filtering and mipmaps at chart borders read chart colours.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from scipy import ndimage
from scipy.spatial import cKDTree
from torch import Tensor

from .. import gaussians as G
from ..targets.raster import rasterize
from ..targets.target_mesh import TargetMesh
from .views import ViewRenders


def texel_points(
    verts: np.ndarray,  # [V, 3] (seam-split vertices)
    faces: np.ndarray,  # [F, 3]
    uvs: np.ndarray,  # [V, 2] bottom-left origin
    normals: np.ndarray,  # [V, 3] unit vertex normals (of the welded mesh, so seams agree)
    size: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Covered texels: flat index [T] (row * size + col), 3D point [T, 3], unit normal [T, 3],
    face [T]."""
    uv_verts = torch.from_numpy(np.stack([uvs[:, 0], 1.0 - uvs[:, 1], np.ones(len(uvs))], 1))
    f = torch.from_numpy(faces).long()
    flat = TargetMesh(uv_verts.float(), f, face_colors=torch.zeros(len(faces), 3))
    K = torch.tensor([[float(size), 0.0, 0.0], [0.0, float(size), 0.0], [0.0, 0.0, 1.0]])
    frag = rasterize(flat, torch.eye(4), K, size, size, need_bary=True, need_depth=False)
    V = torch.from_numpy(verts).float()
    corners = V[f[frag.face]]  # [T, 3, 3]
    points = torch.einsum("tk,tkd->td", frag.bary, corners)
    N = torch.from_numpy(np.asarray(normals)).float()
    n = torch.einsum("tk,tkd->td", frag.bary, N[f[frag.face]])
    return frag.pix, points, torch.nn.functional.normalize(n, dim=1), frag.face


@torch.no_grad()
def bake_texture(
    verts: np.ndarray,
    faces: np.ndarray,
    uvs: np.ndarray,
    normals: np.ndarray,
    size: int,
    views: ViewRenders,
    gaussians: Mapping[str, Tensor],
    *,
    views_per_face: int = 6,
    cos_power: float = 4.0,
    depth_tolerance: float = 0.0,
    depth_tolerance_px: float = 3.0,
    knn: int = 4,
) -> np.ndarray:
    """The base-colour texture [size, size, 3] (sRGB, float in [0, 1], row 0 at v = 1)."""
    pix, points, tnormals, tface = texel_points(verts, faces, uvs, normals, size)
    T = points.shape[0]
    cams = views.cameras
    H, W = cams.height, cams.width
    # Each texel is looked up in the ``views_per_face`` views that face its triangle best.
    best = _best_views(verts, faces, cams, views_per_face)  # [F, k]
    k = best.shape[1]
    pair_view = best[tface].reshape(-1)  # [T * k]
    order = torch.argsort(pair_view, stable=True)
    pair_texel = torch.arange(T).repeat_interleave(k)[order]
    bounds = torch.searchsorted(pair_view[order], torch.arange(len(cams) + 1))
    images = torch.cat([views.rgb, views.alpha, views.depth], -1).permute(0, 3, 1, 2)  # [C,5,H,W]
    acc = torch.zeros(T, 4)  # weighted premultiplied rgb, weighted alpha
    for c in range(len(cams)):
        idx = pair_texel[bounds[c] : bounds[c + 1]]
        if idx.numel() == 0:
            continue
        R, t, K = cams.viewmats[c, :3, :3], cams.viewmats[c, :3, 3], cams.Ks[c]
        pts = points[idx]
        p = pts @ R.T + t  # camera space
        z = p[:, 2].clamp_min(1e-6)
        u = K[0, 0] * p[:, 0] / z + K[0, 2]  # pixel coordinates (centres at +0.5)
        v = K[1, 1] * p[:, 1] / z + K[1, 2]
        to_cam = torch.nn.functional.normalize(-(R.T @ t) - pts, dim=1)
        cos = (tnormals[idx] * to_cam).sum(1)
        grid = torch.stack([2.0 * u / W - 1.0, 2.0 * v / H - 1.0], 1)[None, None]  # [1,1,M,2]
        s = torch.nn.functional.grid_sample(
            images[c : c + 1], grid, mode="bilinear", padding_mode="border", align_corners=False
        )[0, :, 0].T  # [M, 5]: premultiplied rgb, alpha, depth
        near = torch.nn.functional.grid_sample(
            images[c : c + 1, 3:5], grid, mode="nearest", padding_mode="border",
            align_corners=False,
        )[0, :, 0].T  # [M, 2] alpha, depth at the nearest pixel  # fmt: skip
        tol = depth_tolerance + depth_tolerance_px * z / K[0, 0]
        ok = (p[:, 2] > 0) & (u >= 0) & (u < W) & (v >= 0) & (v < H) & (cos > 0.05)
        ok &= (near[:, 0] > 0.5) & ((z - near[:, 1]).abs() <= tol)
        w = torch.where(ok, cos.clamp_min(0) ** cos_power, 0.0)
        acc.index_add_(0, idx, w[:, None] * s[:, :4])
    seen = acc[:, 3] > 1e-4
    colour = torch.zeros(T, 3)
    colour[seen] = acc[seen, :3] / acc[seen, 3:]
    if bool((~seen).any()):
        colour[~seen] = _nearest_gaussian_colours(points[~seen], gaussians, knn)
    tex = np.zeros((size * size, 3), np.float32)
    tex[pix.numpy()] = colour.clamp(0, 1).numpy()
    covered = np.zeros(size * size, bool)
    covered[pix.numpy()] = True
    return dilate(tex.reshape(size, size, 3), covered.reshape(size, size))


def _best_views(verts: np.ndarray, faces: np.ndarray, cams, k: int) -> Tensor:
    """The ``k`` views [F, k] that see each face most frontally (by the face normal)."""
    v = torch.from_numpy(verts).float()
    f = torch.from_numpy(faces).long()
    a, b, c = v[f[:, 0]], v[f[:, 1]], v[f[:, 2]]
    n = torch.nn.functional.normalize(torch.cross(b - a, c - a, dim=1), dim=1)  # [F, 3]
    centre = (a + b + c) / 3.0
    cos = torch.empty(len(faces), len(cams))
    for i, pos in enumerate(cams.positions):  # C small: a loop keeps memory at [F, 3]
        cos[:, i] = (n * torch.nn.functional.normalize(pos - centre, dim=1)).sum(1)
    return cos.topk(min(k, len(cams)), dim=1).indices


def dilate(texture: np.ndarray, covered: np.ndarray) -> np.ndarray:
    """Every uncovered texel takes the colour of the nearest covered one."""
    if covered.all() or not covered.any():
        return texture
    idx = ndimage.distance_transform_edt(~covered, return_distances=False, return_indices=True)
    return texture[idx[0], idx[1]]


def _nearest_gaussian_colours(points: Tensor, gaussians: Mapping[str, Tensor], k: int) -> Tensor:
    o = torch.sigmoid(gaussians["opacities"].detach().float().cpu())
    keep = o >= 0.5 if bool((o >= 0.5).any()) else o >= o.max()
    means = gaussians["means"].detach().float().cpu()[keep].numpy()
    rgb = G.sh0_to_rgb(gaussians["sh0"].detach().float().cpu()[keep][:, 0]).clamp(0, 1)
    k = min(k, len(means))
    dist, idx = cKDTree(means).query(points.numpy(), k=k)
    dist, idx = dist.reshape(len(points), k), idx.reshape(len(points), k)
    w = torch.from_numpy(1.0 / np.maximum(dist, 1e-6)).float()
    return (w[..., None] * rgb[torch.from_numpy(idx)]).sum(1) / w.sum(1, keepdim=True)


def vertex_normals(verts: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted unit vertex normals [V, 3]."""
    a, b, c = verts[faces[:, 0]], verts[faces[:, 1]], verts[faces[:, 2]]
    fn = np.cross(b - a, c - a)  # length = 2 x area
    idx = faces.reshape(-1)
    vn = np.stack(
        [np.bincount(idx, np.repeat(fn[:, d], 3), minlength=len(verts)) for d in range(3)], 1
    )
    length = np.linalg.norm(vn, axis=1, keepdims=True)
    # Where the faces around a vertex cancel (a pinch) or are degenerate: +Z, still a unit vector
    # (glTF requires unit normals).
    return np.where(length > 1e-12, vn / np.maximum(length, 1e-12), [[0.0, 0.0, 1.0]])
