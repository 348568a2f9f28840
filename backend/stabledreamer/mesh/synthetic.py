"""Gaussians laid on a mesh surface, as a trained 3DGS model would leave them: for tests and the
mesh benchmark (known geometry and colours, no training needed).

Each Gaussian is a flat disc tangent to the surface at an area-uniform sample, with standard
deviation ``spacing_factor`` x the mean sample spacing in the plane and ``thickness`` x that
along the normal, opacity ``opacity`` and the face's colour.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import trimesh
from torch import Tensor

from ..gaussians import rgb_to_sh0


def surface_gaussians(
    mesh: trimesh.Trimesh,
    n: int,
    face_colors: np.ndarray | None = None,  # [F, 3] sRGB in [0, 1]; default mid grey
    *,
    opacity: float = 0.9,
    spacing_factor: float = 1.2,
    thickness: float = 0.1,
    seed: int = 0,
) -> dict[str, Tensor]:
    """``n`` flat Gaussians on the surface of ``mesh`` (gaussians.py layout)."""
    points, face = trimesh.sample.sample_surface(mesh, n, seed=seed)
    normals = np.asarray(mesh.face_normals)[face]
    spacing = math.sqrt(float(mesh.area) / n)
    sigma = spacing_factor * spacing
    # Rotation whose third column is the normal: local z = normal, so scale_z is the thickness.
    z = normals / np.linalg.norm(normals, axis=1, keepdims=True)
    helper = np.where(np.abs(z[:, :1]) < 0.9, [[1.0, 0.0, 0.0]], [[0.0, 1.0, 0.0]])
    x = np.cross(helper, z)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y = np.cross(z, x)
    quats = _rotmat_to_quat(np.stack([x, y, z], axis=2))
    colors = np.full((n, 3), 0.5) if face_colors is None else np.asarray(face_colors)[face]
    scales = np.log(np.array([sigma, sigma, thickness * sigma]))
    return {
        "means": torch.from_numpy(points).float(),
        "scales": torch.from_numpy(np.tile(scales, (n, 1))).float(),
        "quats": torch.from_numpy(quats).float(),
        "opacities": torch.full((n,), math.log(opacity / (1.0 - opacity))),
        "sh0": rgb_to_sh0(torch.from_numpy(colors).float())[:, None, :],
        "shN": torch.zeros(n, 0, 3),
    }


def _rotmat_to_quat(R: np.ndarray) -> np.ndarray:
    """Rotation matrices [N, 3, 3] to w x y z quaternions [N, 4]."""
    from scipy.spatial.transform import Rotation

    xyzw = Rotation.from_matrix(R).as_quat()
    return np.concatenate([xyzw[:, 3:], xyzw[:, :3]], 1)
