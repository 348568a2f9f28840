"""Gaussians -> textured mesh: density grid, marching cubes, cleanup, decimation, UVs, bake, GLB.

One entry point, ``gaussians_to_mesh(gaussians, cfg)``, returns a ``TexturedMesh`` in the
Gaussians' own frame; ``TexturedMesh.save(path)`` writes the GLB atomically. Modules, one job each:
``config`` (``MeshConfig``), ``density`` (grid), ``views`` (bake cameras and renders), ``extract``
(iso-level, marching cubes, floaters, decimation), ``unwrap`` (xatlas), ``bake`` (texture),
``export`` (GLB), ``result`` (``TexturedMesh``), ``pipeline`` (the steps in order), ``chamfer``
(the metric), ``synthetic`` (Gaussians on a known surface, for tests and the benchmark).
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor

from .config import MeshConfig
from .errors import MeshError
from .result import TexturedMesh

__all__ = ["MeshConfig", "MeshError", "TexturedMesh", "gaussians_to_mesh"]


def gaussians_to_mesh(
    gaussians: Mapping[str, Tensor], cfg: MeshConfig | None = None
) -> TexturedMesh:
    """The textured surface of ``gaussians`` (gaussians.py layout, raw parameters), in their own
    frame. Raises ``MeshError`` (a ValueError) on input that has no surface."""
    from .pipeline import gaussians_to_mesh as run  # heavy imports only when meshing

    return run(gaussians, cfg)
