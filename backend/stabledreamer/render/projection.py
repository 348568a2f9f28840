"""EWA projection of 3D Gaussians to pixel space (pure torch, gsplat's pinhole conventions).

Mirrors gsplat 1.5.3's fused projection with ``opacities`` given: near-plane cull, ``eps2d`` blur
added to the 2D covariance, opacity-aware extent ``min(3.33, sqrt(2 ln(255 o)))`` for the radii,
and culling of Gaussians whose bounding box misses the image. Written per component on [C, N]
tensors (no tiny batched matmuls), so autograd stays cheap on CPU.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

ALPHA_MIN = 1.0 / 255.0  # gsplat's ALPHA_THRESHOLD
EPS2D = 0.3
NEAR_PLANE = 0.01
FAR_PLANE = 1e10


class Projected(NamedTuple):
    means2d: Tensor  # [C, N, 2] pixel coordinates of the centres
    conics: Tensor  # [C, N, 3] inverse 2D covariance (a, b, c): sigma = a dx²/2 + b dx dy + c dy²/2
    depths: Tensor  # [C, N] camera-space z
    radii: Tensor  # [C, N, 2] int32 bounding-box half sizes in pixels, 0 for culled
    valid: Tensor  # [C, N] bool, radii > 0


def rotation_components(quats: Tensor) -> list[Tensor]:
    """Row-major entries of the rotation matrices of wxyz quaternions [N, 4] (9 tensors [N])."""
    w, x, y, z = torch.nn.functional.normalize(quats, dim=-1).unbind(-1)
    return [
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ]  # fmt: skip


def project(
    means: Tensor,  # [N, 3] world positions
    quats: Tensor,  # [N, 4] wxyz, unnormalised
    scales: Tensor,  # [N, 3] standard deviations (activated)
    opacities: Tensor,  # [N] activated
    viewmats: Tensor,  # [C, 4, 4] world -> camera
    Ks: Tensor,  # [C, 3, 3]
    width: int,
    height: int,
    eps2d: float = EPS2D,
    near_plane: float = NEAR_PLANE,
) -> Projected:
    """Project Gaussians into C cameras; differentiable in means2d, conics and depths."""
    R = rotation_components(quats)  # 9 x [N]
    # M = R diag(s): the world covariance is M M^T.
    sx, sy, sz = scales.unbind(-1)
    M = [R[0] * sx, R[1] * sy, R[2] * sz, R[3] * sx, R[4] * sy, R[5] * sz,
         R[6] * sx, R[7] * sy, R[8] * sz]  # fmt: skip
    V = viewmats[:, :3, :4, None]  # [C, 3, 4, 1] per-camera scalars broadcast over N
    px, py, pz = means[None, :, 0], means[None, :, 1], means[None, :, 2]  # [1, N]
    cam = [V[:, i, 0] * px + V[:, i, 1] * py + V[:, i, 2] * pz + V[:, i, 3] for i in range(3)]
    x, y, z = cam  # [C, N]

    fx, fy = Ks[:, 0, 0, None], Ks[:, 1, 1, None]  # [C, 1]
    cx, cy = Ks[:, 0, 2, None], Ks[:, 1, 2, None]
    in_front = (z > near_plane) & (z < FAR_PLANE)
    zs = torch.where(in_front, z, torch.ones_like(z))  # keeps culled gradients finite
    rz = 1.0 / zs
    # Jacobian uses the clamped direction (gsplat: 1.3 x the half field of view).
    lim_xp = (width - cx) / fx + 0.3 * (0.5 * width / fx)
    lim_xn = cx / fx + 0.3 * (0.5 * width / fx)
    lim_yp = (height - cy) / fy + 0.3 * (0.5 * height / fy)
    lim_yn = cy / fy + 0.3 * (0.5 * height / fy)
    tx = torch.minimum(torch.maximum(x * rz, -lim_xn), lim_xp)  # x / z clamped
    ty = torch.minimum(torch.maximum(y * rz, -lim_yn), lim_yp)
    j00, j02 = fx * rz, -fx * tx * rz  # J = [[j00, 0, j02], [0, j11, j12]]
    j11, j12 = fy * rz, -fy * ty * rz

    # T = J W (2x3), W = camera rotation rows; then A = T M (2x3); cov2d = A A^T.
    W = [viewmats[:, i, j, None] for i in range(3) for j in range(3)]  # 9 x [C, 1]
    T0 = [j00 * W[k] + j02 * W[6 + k] for k in range(3)]  # [C, N]
    T1 = [j11 * W[3 + k] + j12 * W[6 + k] for k in range(3)]
    A0 = [T0[0] * M[j] + T0[1] * M[3 + j] + T0[2] * M[6 + j] for j in range(3)]
    A1 = [T1[0] * M[j] + T1[1] * M[3 + j] + T1[2] * M[6 + j] for j in range(3)]
    cxx = A0[0] * A0[0] + A0[1] * A0[1] + A0[2] * A0[2] + eps2d
    cxy = A0[0] * A1[0] + A0[1] * A1[1] + A0[2] * A1[2]
    cyy = A1[0] * A1[0] + A1[1] * A1[1] + A1[2] * A1[2] + eps2d
    det = cxx * cyy - cxy * cxy
    ok = in_front & (det > 0)
    inv_det = 1.0 / torch.where(ok, det, torch.ones_like(det))
    conics = torch.stack([cyy * inv_det, -cxy * inv_det, cxx * inv_det], dim=-1)  # [C, N, 3]
    means2d = torch.stack([fx * x * rz + cx, fy * y * rz + cy], dim=-1)  # [C, N, 2]

    with torch.no_grad():
        op = opacities.detach()[None, :]  # [1, N]
        extend = torch.sqrt(2.0 * torch.log(op.clamp_min(ALPHA_MIN) / ALPHA_MIN)).clamp_max(3.33)
        rx = torch.ceil(extend * torch.sqrt(cxx.detach().clamp_min(0)))
        ry = torch.ceil(extend * torch.sqrt(cyy.detach().clamp_min(0)))
        m2 = means2d.detach()
        ok = ok & (op >= ALPHA_MIN) & ((rx > 0) | (ry > 0))
        ok &= (m2[..., 0] + rx > 0) & (m2[..., 0] - rx < width)
        ok &= (m2[..., 1] + ry > 0) & (m2[..., 1] - ry < height)
        radii = torch.stack([rx, ry], dim=-1).masked_fill(~ok[..., None], 0).to(torch.int32)
    return Projected(means2d, conics, z, radii, ok)
