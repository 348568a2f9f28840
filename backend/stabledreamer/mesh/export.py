"""GLB export: one mesh, one PBR material with the base-colour texture, glTF's Y-up frame.

Our frame is Blender's (Z up, metres); glTF is Y up (metres). Blender's glTF importer maps glTF
(x, y, z) to Blender (x, -z, y), so we write (x, y, z) as (x, z, -y) and the import lands exactly
in our frame. The material is unlit-looking PBR: metallic 0, roughness 1, base colour = texture.
"""

from __future__ import annotations

import io
import os

import numpy as np
import trimesh
from PIL import Image

from ..atomic import atomic_path

Z_UP_TO_Y_UP = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])
"""(x, y, z) -> (x, z, -y): our Z-up frame to glTF's Y-up frame (inverse of Blender's import)."""


def glb_bytes(
    verts: np.ndarray,  # [V, 3] our frame
    faces: np.ndarray,  # [F, 3]
    uvs: np.ndarray,  # [V, 2] bottom-left origin (trimesh flips v for glTF)
    texture: np.ndarray,  # [S, S, 3] sRGB in [0, 1], row 0 at v = 1
    normals: np.ndarray | None = None,  # [V, 3] unit normals, our frame
    name: str = "stabledreamer_mesh",
) -> bytes:
    image = Image.fromarray(np.round(np.clip(texture, 0, 1) * 255).astype(np.uint8), "RGB")
    material = trimesh.visual.material.PBRMaterial(
        name=f"{name}_material",
        baseColorTexture=image,
        baseColorFactor=[255, 255, 255, 255],
        metallicFactor=0.0,
        roughnessFactor=1.0,
    )
    visual = trimesh.visual.TextureVisuals(uv=np.asarray(uvs, np.float64), material=material)
    mesh = trimesh.Trimesh(
        vertices=np.asarray(verts, np.float64) @ Z_UP_TO_Y_UP.T,
        faces=np.asarray(faces, np.int64),
        vertex_normals=None if normals is None else np.asarray(normals) @ Z_UP_TO_Y_UP.T,
        visual=visual,
        process=False,
    )
    scene = trimesh.Scene()
    scene.add_geometry(mesh, node_name=name, geom_name=name)
    buf = io.BytesIO()
    scene.export(buf, file_type="glb", include_normals=normals is not None)
    return buf.getvalue()


def write_glb(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` atomically: a temporary name in the same folder, then a rename."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
