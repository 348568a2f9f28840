"""3D Gaussian Splatting .ply files as Gaussian objects in the scene (the same ellipsoid display
as the live preview): a job's ``gaussians.ply`` or any 3DGS file from disk.

Reads the reference layout (x y z, f_dc_*, opacity, scale_* as logs, rot_* as w x y z) with the
bundled ``plyfile``, from any tool that writes it (binary or ASCII, float or double, any
spherical-harmonics degree: the ``f_rest_*`` count must be one); colours are the degree-0 spherical
harmonics (the view-independent part). Compressed layouts (SuperSplat/PlayCanvas ``chunk`` +
``packed_*``) and other .ply files are refused with what the file is and what to do.
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
    names = v.dtype.names or ()
    if "chunk" in data or any(n.startswith("packed_") for n in names):
        raise GaussianPlyError(
            f"{path.name} is a compressed 3D Gaussian Splatting file (SuperSplat/PlayCanvas "
            "layout), which this importer does not read: export it uncompressed (.ply) first."
        )
    missing = [p for p in NEED if p not in names]
    if missing:
        raise GaussianPlyError(
            f"{path.name} is not a 3D Gaussian Splatting file (missing {', '.join(missing[:4])})."
        )
    rest = sum(1 for n in names if n.startswith("f_rest_"))
    if rest % 3 or round(np.sqrt(rest // 3 + 1)) ** 2 != rest // 3 + 1:
        raise GaussianPlyError(
            f"{path.name} has {rest} f_rest_* properties, which is no spherical-harmonics degree "
            "(3, 8, 15 or 24 coefficients per colour channel are): the file is damaged."
        )
    if len(v) == 0:
        raise GaussianPlyError(f"{path.name} holds no Gaussians.")

    def col(*names: str) -> np.ndarray:
        return np.stack([np.asarray(v[n], dtype=np.float32) for n in names], axis=1)

    quats = col("rot_0", "rot_1", "rot_2", "rot_3")
    quats /= np.maximum(np.linalg.norm(quats, axis=1, keepdims=True), 1e-12)
    with np.errstate(over="ignore"):  # huge logits/log-scales saturate, as in splat renderers
        g = {
            "means": col("x", "y", "z"),
            "scales": np.exp(np.clip(col("scale_0", "scale_1", "scale_2"), -30.0, 10.0)),
            "quats": quats,
            "rgb": np.clip(0.5 + SH_C0 * col("f_dc_0", "f_dc_1", "f_dc_2"), 0.0, 1.0),
            "opacities": 1.0 / (1.0 + np.exp(-col("opacity")[:, 0])),
        }
    finite = np.ones(len(quats), dtype=bool)
    for a in g.values():
        finite &= np.isfinite(a.reshape(len(quats), -1)).all(axis=1)
    if not finite.all():  # NaN rows are drawn by no renderer; leave them out
        g = {k: np.ascontiguousarray(a[finite]) for k, a in g.items()}
    return g


def import_gaussians(
    path: str | Path,
    name: str | None = None,
    collection: bpy.types.Collection | None = None,
    point_cap: int = preview.DEFAULT_POINT_CAP,
) -> bpy.types.Object:
    g = read(path)
    obj = preview.new_gaussian_object(name or Path(path).stem, collection)
    preview.update_preview(**g, point_cap=point_cap, keep_all=True, obj=obj)
    return obj
