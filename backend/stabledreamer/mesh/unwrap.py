"""UV unwrap with xatlas: charts packed into one square atlas of the texture's size."""

from __future__ import annotations

import numpy as np

from .errors import MeshError


def unwrap(
    verts: np.ndarray,  # [V, 3]
    faces: np.ndarray,  # [F, 3]
    texture_size: int,
    padding: int = 2,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split vertices along chart seams and give each a UV.

    Returns ``vmapping`` [V'] (the original vertex of each new one), ``faces`` [F, 3] into the new
    vertices and ``uvs`` [V', 2] in [0, 1] with the origin at the bottom-left (glTF/trimesh
    convention as trimesh exports it: texel row 0 is at v = 1).
    """
    import xatlas

    atlas = xatlas.Atlas()
    atlas.add_mesh(np.ascontiguousarray(verts, np.float32), np.ascontiguousarray(faces, np.uint32))
    chart = xatlas.ChartOptions()
    pack = xatlas.PackOptions()
    pack.resolution = int(texture_size)
    pack.padding = int(padding)
    pack.bilinear = True
    atlas.generate(chart, pack)
    if atlas.atlas_count != 1:
        raise MeshError(
            f"the UV charts did not fit one {texture_size}^2 atlas; use a larger --texture-size"
        )
    vmapping, new_faces, uvs = atlas[0]
    # xatlas's v grows with the atlas row (top-down); flip to bottom-left origin.
    uvs = np.asarray(uvs, np.float64).copy()
    uvs[:, 1] = 1.0 - uvs[:, 1]
    return np.asarray(vmapping, np.int64), np.asarray(new_faces, np.int64), uvs
