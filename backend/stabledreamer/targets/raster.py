"""Exact, unlit views of a ``TargetMesh``: a vectorised z-buffer triangle rasteriser in torch.

Per camera: vertices go to camera space; triangles crossing the near plane are clipped there (one
or two triangles each, whose corners are stored as barycentric points of the original face, so
colours stay exact); the rest are projected and scan-converted exactly: for every triangle and
every pixel row it covers, the covered column span is solved from the three edge functions, and
every (triangle, pixel) pair gets its 1/z, an affine function of screen position. The z-buffer is
one ``scatter_reduce(amax)`` over 64-bit keys (float bits of 1/z, triangle id), so ties resolve
deterministically; only the winning triangle of each pixel is shaded, with perspective-correct
barycentrics. No Python loop runs over pixels or triangles.

Pixel (i, j) has its centre at (j + 0.5, i + 0.5) in the pixel coordinates of ``Ks`` (as the
Gaussian rasteriser). Anti-aliasing: render at ``supersample`` times the resolution (sub-pixel
centres spread evenly over each pixel), composite over the background, then box-average
``supersample`` x ``supersample`` blocks; alpha is averaged the same way, so edge pixels get
fractional alpha.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..cameras import Cameras
from .target_mesh import TargetMesh

NEAR = 1e-2
"""Near-plane depth (scene units) where triangles are clipped; the object is at ~2.5."""
_EPS_PX = 1e-4  # span widening (pixels) so shared edges through pixel centres leave no crack
_TENSORS = ("vertices", "faces", "vertex_colors", "face_colors", "uvs", "texture", "texture_rects")
_EPS_L = 1e-9  # tolerance on edge functions for edges parallel to the rows


@dataclass
class Fragments:
    """The visible surface of one view at render resolution."""

    pix: Tensor  # [M] int64 flat pixel index (row * width + col) of covered pixels
    face: Tensor  # [M] int64 original face id
    bary: Tensor | None = None  # [M, 3] float32 perspective-correct barycentrics in the face
    depth: Tensor | None = None  # [M] float32 camera-space z


def render_mesh(
    target: TargetMesh,
    cameras: Cameras,
    background: Tensor,  # [3]
    supersample: int = 4,
    near: float = NEAR,
) -> tuple[Tensor, Tensor]:
    """Unlit anti-aliased views: rgb [C, H, W, 3] over ``background`` and alpha [C, H, W, 1]."""
    device = cameras.device
    s = int(supersample)
    if s < 1:
        raise ValueError(f"supersample must be >= 1, got {supersample}")
    W, H = cameras.width, cameras.height
    Ws, Hs = W * s, H * s
    mesh = _on(target, device)
    shader = _Shader(mesh)
    bg = torch.as_tensor(background, dtype=torch.float32, device=device).reshape(3)
    rgbs, alphas = [], []
    for c in range(len(cameras)):
        K = _scaled_K(cameras.Ks[c], s)
        need_bary = mesh.face_colors is None
        frag = rasterize(mesh, cameras.viewmats[c], K, Ws, Hs, near, need_bary, need_depth=False)
        rgb = bg.expand(Hs * Ws, 3).clone()
        rgb[frag.pix] = shader(frag.face, frag.bary)
        alpha = torch.zeros(Hs * Ws, dtype=torch.float32, device=device)
        alpha[frag.pix] = 1.0
        if s > 1:
            rgb = rgb.view(H, s, W, s, 3).mean(dim=(1, 3))
            alpha = alpha.view(H, s, W, s).mean(dim=(1, 3))
        rgbs.append(rgb.reshape(H, W, 3))
        alphas.append(alpha.reshape(H, W, 1))
    return torch.stack(rgbs), torch.stack(alphas)


def render_mesh_depth(target: TargetMesh, cameras: Cameras, near: float = NEAR) -> Tensor:
    """Camera-space depth [C, H, W, 1] of the nearest surface at pixel centres (0 where empty)."""
    mesh = _on(target, cameras.device)
    W, H = cameras.width, cameras.height
    out = []
    for c in range(len(cameras)):
        frag = rasterize(mesh, cameras.viewmats[c], cameras.Ks[c], W, H, near, need_bary=False)
        depth = torch.zeros(H * W, dtype=torch.float32, device=cameras.device)
        depth[frag.pix] = frag.depth
        out.append(depth.reshape(H, W, 1))
    return torch.stack(out)


def _on(target: TargetMesh, device: torch.device) -> TargetMesh:
    if target.vertices.device == torch.device(device):
        return target
    moved = {k: (v.to(device) if (v := getattr(target, k)) is not None else None) for k in _TENSORS}
    return TargetMesh(**moved, center=target.center, scale=target.scale)


def _scaled_K(K: Tensor, s: int) -> Tensor:
    # Sub-pixel (i', j') centre at (j' + 0.5, i' + 0.5) / s in the original pixel coordinates.
    Ks = K.clone()
    Ks[:2] *= s
    return Ks


def rasterize(
    mesh: TargetMesh,
    viewmat: Tensor,  # [4, 4] world -> camera (OpenCV axes)
    K: Tensor,  # [3, 3] pixel intrinsics
    width: int,
    height: int,
    near: float = NEAR,
    need_bary: bool = True,
    need_depth: bool = True,
) -> Fragments:
    """The nearest triangle, barycentrics and depth of every covered pixel centre of one view."""
    device = mesh.vertices.device
    f64 = torch.float64
    V = mesh.vertices.to(f64)
    R, t = viewmat[:3, :3].to(f64), viewmat[:3, 3].to(f64)
    P = V @ R.T + t  # [V, 3] camera space
    face_ids, B, clipped = _clip_near(P[:, 2], mesh.faces, near)  # [T], [T, 3, 3]
    Pc = P[mesh.faces[face_ids]]  # [T, 3, 3] corners in camera space
    if clipped:
        Pc = torch.einsum("tkm,tmd->tkd", B, Pc)
    Z = Pc[..., 2]  # [T, 3], all >= near
    K = K.to(f64)
    x = K[0, 0] * Pc[..., 0] / Z + K[0, 1] * Pc[..., 1] / Z + K[0, 2]  # [T, 3]
    y = K[1, 1] * Pc[..., 1] / Z + K[1, 2]

    # Screen-space barycentric coordinates as affine functions l_k = Lx x + Ly y + Lc.
    i1, i2 = [1, 2, 0], [2, 0, 1]
    area2 = (x[:, 1] - x[:, 0]) * (y[:, 2] - y[:, 0]) - (x[:, 2] - x[:, 0]) * (y[:, 1] - y[:, 0])
    ymin, ymax = y.min(1).values, y.max(1).values
    xmin, xmax = x.min(1).values, x.max(1).values
    keep = (area2.abs() > 1e-12) & (xmax >= 0) & (xmin <= width) & (ymax >= 0) & (ymin <= height)
    face_ids, B, Z, x, y, area2 = face_ids[keep], B[keep], Z[keep], x[keep], y[keep], area2[keep]
    ymin, ymax = ymin[keep], ymax[keep]
    inv_a = 1.0 / area2[:, None]
    Lx = (y[:, i1] - y[:, i2]) * inv_a  # [T, 3]
    Ly = (x[:, i2] - x[:, i1]) * inv_a
    Lc = (x[:, i1] * y[:, i2] - x[:, i2] * y[:, i1]) * inv_a
    iZ = 1.0 / Z
    Ax, Ay, Ac = (Lx * iZ).sum(1), (Ly * iZ).sum(1), (Lc * iZ).sum(1)  # 1/z = Ax x + Ay y + Ac

    # (triangle, row) pairs: rows whose centre line meets the triangle's y range.
    r0 = torch.ceil(ymin - 0.5 - _EPS_PX).clamp(0, height).long()
    r1 = torch.floor(ymax - 0.5 + _EPS_PX).clamp(-1, height - 1).long()
    nrows = (r1 - r0 + 1).clamp_min(0)
    tri_r = torch.repeat_interleave(torch.arange(nrows.shape[0], device=device), nrows)
    per_tri = torch.cat([Lx, Ly, Lc, Ax[:, None], Ay[:, None], Ac[:, None]], 1)  # [T, 12]
    per_tri = per_tri.repeat_interleave(nrows, dim=0)  # [R, 12], tri_r is sorted
    a, Ly_r, Lc_r = per_tri[:, 0:3], per_tri[:, 3:6], per_tri[:, 6:9]
    Ax_r, Ay_r, Ac_r = per_tri[:, 9], per_tri[:, 10], per_tri[:, 11]
    row = r0.repeat_interleave(nrows) + _local_index(nrows)
    yc = row.to(f64) + 0.5
    c = Ly_r * yc[:, None] + Lc_r  # edge functions along the row: a * x + c
    bound = -c / a
    inf = torch.tensor(float("inf"), dtype=f64, device=device)
    xlo = torch.where(a > 0, bound, -inf).max(1).values
    xhi = torch.where(a < 0, bound, inf).min(1).values
    empty = ((a == 0) & (c < -_EPS_L)).any(1)
    j0 = torch.ceil(xlo.clamp(-2, width + 2) - 0.5 - _EPS_PX).clamp(0, width).long()
    j1 = torch.floor(xhi.clamp(-2, width + 2) - 0.5 + _EPS_PX).clamp(-1, width - 1).long()
    ncols = torch.where(empty, 0, (j1 - j0 + 1).clamp_min(0))

    # (triangle, pixel) pairs: 1/z from the span start, z-buffer on (1/z bits, triangle) keys.
    # Per-row values are expanded with repeat_interleave (a sorted copy, cheaper than a gather)
    # and packed so that each pair needs two expansions only.
    iz0 = Ax_r * (j0.to(f64) + 0.5) + Ay_r * yc + Ac_r  # [R] 1/z at the span start
    per_row = torch.stack([iz0, Ax_r], 1).float().repeat_interleave(ncols, dim=0)  # [N, 2]
    packed = ((row * width + j0) << 32 | tri_r).repeat_interleave(ncols)  # [N]
    local = _local_index(ncols)
    iz = torch.addcmul(per_row[:, 0], per_row[:, 1], local.float()).clamp_min(1e-30)
    pix = (packed >> 32) + local
    key = (iz.view(torch.int32).long() << 32) | (packed & 0xFFFFFFFF)
    zbuf = torch.full((width * height,), -1, dtype=torch.int64, device=device)
    zbuf.scatter_reduce_(0, pix, key, reduce="amax", include_self=True)

    covered = zbuf >= 0
    pix = torch.nonzero(covered).squeeze(1)
    win = zbuf.masked_select(covered) & 0xFFFFFFFF
    face = face_ids.index_select(0, win)
    if not (need_bary or need_depth):
        return Fragments(pix=pix, face=face)
    # Perspective-correct barycentrics of the winners, in float32 about the image centre (the
    # coefficients are taken there in float64, so far-off clipped corners lose no precision).
    xc, yc0 = 0.5 * width, 0.5 * height
    table = torch.cat([Lx, Ly, Lx * xc + Ly * yc0 + Lc, iZ], 1).float()  # [T, 12]
    tw = table.index_select(0, win)
    px = (pix % width).float() + (0.5 - xc)
    py = torch.div(pix, width, rounding_mode="floor").float() + (0.5 - yc0)
    lam = (tw[:, 0:3] * px[:, None] + tw[:, 3:6] * py[:, None] + tw[:, 6:9]).clamp_min(0.0)
    w = lam * tw[:, 9:12]
    wsum = w.sum(1, keepdim=True).clamp_min(1e-30)
    bary = w / wsum  # [M, 3] in the (possibly clipped) raster triangle
    if clipped:
        bary = torch.einsum("mk,mkn->mn", bary, B.float().index_select(0, win))
    return Fragments(pix=pix, face=face, bary=bary, depth=1.0 / wsum[:, 0])


def _local_index(counts: Tensor) -> Tensor:
    """Index of every element within its group, for consecutive groups of sizes ``counts``."""
    starts = torch.cumsum(counts, 0) - counts
    total = int(starts[-1] + counts[-1]) if counts.numel() else 0
    return torch.arange(total, device=counts.device) - starts.repeat_interleave(counts)


def _clip_near(z: Tensor, faces: Tensor, near: float) -> tuple[Tensor, Tensor, bool]:
    """Clip faces against z = near.

    Returns the original face id [T] of every resulting triangle, its corners as barycentric
    points of that face, B [T, 3, 3] (row k = weights of corner k; identity for unclipped ones),
    and whether any face was clipped or dropped.
    """
    device, dtype = z.device, z.dtype
    zf = z[faces]  # [F, 3]
    inside = zf > near
    n_in = inside.sum(1)
    eye = torch.eye(3, dtype=dtype, device=device)
    full = torch.nonzero(n_in == 3).squeeze(1)
    ids, Bs = [full], [eye.expand(full.shape[0], 3, 3)]
    for n in (1, 2):
        sel = torch.nonzero(n_in == n).squeeze(1)
        if sel.numel() == 0:
            continue
        # Rotate corners so the odd one out (the inside one for n=1, the outside one for n=2)
        # comes first; the cyclic order keeps the winding.
        odd = inside[sel].long().argmax(1) if n == 1 else (~inside[sel]).long().argmax(1)
        k = (odd[:, None] + torch.arange(3, device=device)) % 3  # [S, 3]
        zk = zf[sel].gather(1, k)
        E0, E1, E2 = eye[k[:, 0]], eye[k[:, 1]], eye[k[:, 2]]

        def cut(Ea, Eb, za, zb):  # point on edge a->b at z = near
            tt = ((near - za) / (zb - za))[:, None]
            return (1 - tt) * Ea + tt * Eb

        if n == 1:  # corner 0 inside: one triangle
            tri = torch.stack(
                [E0, cut(E0, E1, zk[:, 0], zk[:, 1]), cut(E0, E2, zk[:, 0], zk[:, 2])], 1
            )
            ids.append(sel)
            Bs.append(tri)
        else:  # corner 0 outside: quad (1, 2, 2->0, 1->0) as two triangles
            c20 = cut(E2, E0, zk[:, 2], zk[:, 0])
            c10 = cut(E1, E0, zk[:, 1], zk[:, 0])
            ids += [sel, sel]
            Bs += [torch.stack([E1, E2, c20], 1), torch.stack([E1, c20, c10], 1)]
    return torch.cat(ids), torch.cat(Bs), bool(full.shape[0] < faces.shape[0])


class _Shader:
    """Per-face shading data laid out for fast row gathers (index_select on 4+ columns)."""

    def __init__(self, mesh: TargetMesh) -> None:
        self.kind = mesh.colour_source
        pad = torch.nn.functional.pad
        if self.kind == "face":
            self.table = pad(mesh.face_colors.float(), (0, 1))  # [F, 4]
        elif self.kind == "vertex":
            self.table = mesh.vertex_colors.float()[mesh.faces].reshape(-1, 9)  # [F, 9]
        else:
            F = mesh.faces.shape[0]
            Ht, Wt = mesh.texture.shape[:2]
            rects = mesh.texture_rects
            if rects is None:
                rects = torch.tensor([0, 0, Ht, Wt], device=mesh.faces.device).expand(F, 4)
            self.table = mesh.uvs.float().reshape(F, 6)  # [F, 6]
            self.rects = rects.contiguous()  # [F, 4]
            self.texels = pad(mesh.texture.float().reshape(-1, 3), (0, 1))  # [Ht * Wt, 4]
            self.tex_width = Wt

    def __call__(self, face: Tensor, bary: Tensor | None) -> Tensor:
        """Unlit sRGB base colour [M, 3] at barycentric points ``bary`` [M, 3] of ``face`` [M]."""
        rows = self.table.index_select(0, face)
        if self.kind == "face":
            return rows[:, :3]
        if self.kind == "vertex":
            return torch.bmm(bary[:, None, :], rows.view(-1, 3, 3))[:, 0]
        uv = torch.bmm(bary[:, None, :], rows.view(-1, 3, 2))[:, 0]
        return self._sample(uv, self.rects.index_select(0, face))

    def _sample(self, uv: Tensor, rects: Tensor) -> Tensor:
        """Bilinear lookup with wrap (glTF REPEAT) inside each sample's atlas rectangle."""
        r0, c0, h, w = rects.unbind(1)
        fx = uv[:, 0] * w - 0.5
        fy = (1.0 - uv[:, 1]) * h - 0.5
        x0, y0 = torch.floor(fx), torch.floor(fy)
        tx, ty = (fx - x0)[:, None], (fy - y0)[:, None]
        x0, y0 = x0.long(), y0.long()
        xa, xb = x0.remainder(w) + c0, (x0 + 1).remainder(w) + c0
        ya = (y0.remainder(h) + r0) * self.tex_width
        yb = ((y0 + 1).remainder(h) + r0) * self.tex_width
        tap = torch.stack([ya + xa, ya + xb, yb + xa, yb + xb], 1).reshape(-1)
        t = self.texels.index_select(0, tap).view(-1, 4, 4)[..., :3]
        top = torch.lerp(t[:, 0], t[:, 1], tx)
        bottom = torch.lerp(t[:, 2], t[:, 3], tx)
        return torch.lerp(top, bottom, ty)
