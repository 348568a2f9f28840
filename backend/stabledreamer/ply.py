"""Read and write the standard 3D Gaussian Splatting .ply layout.

Vertex properties, all float32, in this order (the layout of the 3DGS reference code, which splat
viewers and tools read): x y z nx ny nz f_dc_0..2 f_rest_0..(3K-1) opacity scale_0..2 rot_0..3.
``opacity`` is a logit, ``scale_*`` are logs, ``rot_*`` a w x y z quaternion, ``f_rest`` is stored
channel-major (all red coefficients, then green, then blue), as the reference code writes it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from plyfile import PlyData, PlyElement
from torch import Tensor

from .atomic import atomic_path
from .errors import StableDreamerError


class PlyFormatError(StableDreamerError):
    """The file is not a 3DGS .ply; the message says what is missing."""


def save_ply(gaussians: Mapping[str, Tensor], path: str | os.PathLike) -> None:
    """Write ``gaussians`` to ``path`` atomically (a reader never sees half a file)."""
    g = {k: v.detach().cpu().float().numpy() for k, v in gaussians.items()}
    n = g["means"].shape[0]
    k = g["shN"].shape[1]
    f_rest = g["shN"].transpose(0, 2, 1).reshape(n, 3 * k)  # channel-major
    names = (
        ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
        + [f"f_rest_{i}" for i in range(3 * k)]
        + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    )
    columns = np.concatenate(
        [
            g["means"],
            np.zeros((n, 3), np.float32),
            g["sh0"].reshape(n, 3),
            f_rest,
            g["opacities"].reshape(n, 1),
            g["scales"],
            g["quats"],
        ],
        axis=1,
    ).astype(np.float32)
    records = np.empty(n, dtype=[(name, "f4") for name in names])
    for i, name in enumerate(names):
        records[name] = columns[:, i]
    with atomic_path(path) as tmp:
        PlyData([PlyElement.describe(records, "vertex")], text=False).write(str(tmp))


def load_ply(path: str | os.PathLike) -> dict[str, Tensor]:
    """Read a 3DGS .ply into the Gaussian dict (raw parameters)."""
    path = Path(path)
    if not path.is_file():
        raise PlyFormatError(f"{path}: no such file")
    try:
        data = PlyData.read(str(path))
    except Exception as e:  # plyfile raises several types for malformed input
        raise PlyFormatError(f"{path}: not a readable .ply file ({e})") from e
    if "vertex" not in data:
        raise PlyFormatError(f"{path}: no vertex element; not a 3D Gaussian Splatting file")
    v = data["vertex"].data
    names = set(v.dtype.names or ())
    need = (
        ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity"]
        + [f"scale_{i}" for i in range(3)]
        + [f"rot_{i}" for i in range(4)]
    )
    missing = [p for p in need if p not in names]
    if missing:
        raise PlyFormatError(
            f"{path}: missing 3DGS properties {', '.join(missing)}; "
            "expected the layout written by 3D Gaussian Splatting "
            "(x y z f_dc_* opacity scale_* rot_*)"
        )

    def col(*props: str) -> np.ndarray:
        return np.stack([np.asarray(v[p], dtype=np.float32) for p in props], axis=1)

    rest = sorted((p for p in names if p.startswith("f_rest_")), key=lambda p: int(p[7:]))
    n = len(v)
    if len(rest) % 3:
        raise PlyFormatError(f"{path}: {len(rest)} f_rest properties is not a multiple of 3")
    k = len(rest) // 3
    shN = col(*rest).reshape(n, 3, k).transpose(0, 2, 1) if k else np.zeros((n, 0, 3), np.float32)
    return {
        "means": torch.from_numpy(col("x", "y", "z")),
        "scales": torch.from_numpy(col("scale_0", "scale_1", "scale_2")),
        "quats": torch.from_numpy(col("rot_0", "rot_1", "rot_2", "rot_3")),
        "opacities": torch.from_numpy(col("opacity")[:, 0].copy()),
        "sh0": torch.from_numpy(col("f_dc_0", "f_dc_1", "f_dc_2")[:, None, :].copy()),
        "shN": torch.from_numpy(np.ascontiguousarray(shN)),
    }
