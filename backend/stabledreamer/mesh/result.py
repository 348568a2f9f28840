"""The mesh step's result: a UV-mapped triangle mesh with its base-colour texture."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from ..targets.target_mesh import TargetMesh


@dataclass
class TexturedMesh:
    """A UV-mapped triangle mesh with a base-colour texture (vertices split along UV seams)."""

    vertices: np.ndarray  # [V, 3] float64
    faces: np.ndarray  # [F, 3] int64
    uvs: np.ndarray  # [V, 2] float64, origin bottom-left
    normals: np.ndarray  # [V, 3] float64 unit, smooth across seams
    texture: np.ndarray  # [S, S, 3] float32 sRGB in [0, 1], row 0 at v = 1
    timings: dict[str, float] = field(default_factory=dict)  # seconds per step
    level: float = 0.0  # iso-level used

    def transformed(self, fn: Callable[[Tensor], Tensor]) -> TexturedMesh:
        """The same mesh with vertices mapped by ``fn`` (a translation and uniform scale)."""
        v = fn(torch.from_numpy(self.vertices)).double().numpy()
        return TexturedMesh(v, self.faces, self.uvs, self.normals, self.texture,
                            dict(self.timings), self.level)  # fmt: skip

    def to_target_mesh(self) -> TargetMesh:
        """For ``targets.raster.render_mesh``: per-corner UVs and the texture."""
        return TargetMesh(
            vertices=torch.from_numpy(self.vertices).float(),
            faces=torch.from_numpy(self.faces).long(),
            uvs=torch.from_numpy(self.uvs[self.faces]).float(),
            texture=torch.from_numpy(self.texture).float(),
        )

    def glb(self) -> bytes:
        """The GLB file's bytes (glTF Y-up; see export)."""
        from .export import glb_bytes

        return glb_bytes(self.vertices, self.faces, self.uvs, self.texture, self.normals)

    def save(self, path: str | os.PathLike) -> None:
        """Write the GLB atomically (nothing at ``path`` if anything fails)."""
        from .export import write_glb

        write_glb(path, self.glb())
