"""3D Gaussian Splatting .ply files as Gaussian objects in the scene (the same ellipsoid display
as the live preview): a job's ``gaussians.ply`` or any 3DGS file from disk.

Reads the reference layout (x y z, f_dc_*, opacity, scale_* as logs, rot_* as w x y z) with the
bundled ``plyfile``; colours are the degree-0 spherical harmonics (view-independent part).
"""

from __future__ import annotations

from pathlib import Path

import bpy
import numpy as np

from . import preview

SH_C0 = 0.28209479177387814
"""Degree-0 real spherical harmonic: rgb = 0.5 + SH_C0 * f_dc."""
NEED = ("x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1", "scale_2",
        "rot_0", "rot_1", "rot_2", "rot_3")  # fmt: skip


class GaussianPlyError(ValueError):
    pass


def read(path: str | Path) -> dict[str, np.ndarray]:
    """Activated arrays: means, scales (linear), quats (unit, w x y z), rgb, opacities."""
    from plyfile import PlyData

    path = Path(path)
    try:
        data = PlyData.read(str(path))
        v = data["vertex"].data
    except Exception as e:  # plyfile raises several types on bad input
        raise GaussianPlyError(f"{path.name} is not a readable .ply file ({e}).") from None
    missing = [p for p in NEED if p not in (v.dtype.names or ())]
    if missing:
        raise GaussianPlyError(
            f"{path.name} is not a 3D Gaussian Splatting file (missing {', '.join(missing[:4])})."
        )

    def col(*names: str) -> np.ndarray:
        return np.stack([np.asarray(v[n], dtype=np.float32) for n in names], axis=1)

    quats = col("rot_0", "rot_1", "rot_2", "rot_3")
    quats /= np.maximum(np.linalg.norm(quats, axis=1, keepdims=True), 1e-12)
    return {
        "means": col("x", "y", "z"),
        "scales": np.exp(col("scale_0", "scale_1", "scale_2")),
        "quats": quats,
        "rgb": np.clip(0.5 + SH_C0 * col("f_dc_0", "f_dc_1", "f_dc_2"), 0.0, 1.0),
        "opacities": 1.0 / (1.0 + np.exp(-col("opacity")[:, 0])),
    }


def import_gaussians(
    path: str | Path,
    name: str | None = None,
    collection: bpy.types.Collection | None = None,
    point_cap: int = preview.DEFAULT_POINT_CAP,
) -> bpy.types.Object:
    g = read(path)
    obj = preview.new_gaussian_object(name or Path(path).stem, collection)
    preview.update_preview(**g, point_cap=point_cap, obj=obj)
    return obj
