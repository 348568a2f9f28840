"""Points on the selected mesh's surface: the initial point cloud of "Start from selected mesh".

The backend generates in a unit frame (the object fits a ball of radius 1 about the origin,
Z up, front facing -Y: Blender's own conventions). The selection's points are moved and scaled
into that frame; the :class:`Placement` maps the result back onto the blockout.
"""

from __future__ import annotations

from dataclasses import dataclass

import bpy
import numpy as np

FILL = 0.8
"""The blockout fills this fraction of the unit ball (room for the detail SDS adds)."""


@dataclass
class Placement:
    """Unit frame -> scene: ``scene = location + scale * unit``."""

    location: tuple[float, float, float]
    scale: float

    def to_list(self) -> list[float]:
        return [*map(float, self.location), float(self.scale)]

    @classmethod
    def from_list(cls, values) -> Placement:
        x, y, z, s = (float(v) for v in values)
        return cls((x, y, z), s)


class SelectionError(ValueError):
    pass


def sample_surface(
    obj: bpy.types.Object, count: int, depsgraph=None, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """``count`` points on the evaluated (modifiers applied) surface of ``obj`` in world space,
    area-weighted, with each face's material viewport colour: ``(points [N,3], colors [N,3])``."""
    if obj is None or obj.type != "MESH":
        raise SelectionError("Select a mesh object to start from (its surface gives the points).")
    depsgraph = depsgraph or bpy.context.evaluated_depsgraph_get()
    evaluated = obj.evaluated_get(depsgraph)
    mesh = evaluated.to_mesh()
    try:
        mesh.calc_loop_triangles()
        nt = len(mesh.loop_triangles)
        if nt == 0:
            raise SelectionError(f"{obj.name!r} has no faces: give it a surface to start from.")
        co = np.empty(len(mesh.vertices) * 3, np.float32)
        mesh.vertices.foreach_get("co", co)
        tri = np.empty(nt * 3, np.int32)
        mesh.loop_triangles.foreach_get("vertices", tri)
        mat_index = np.empty(nt, np.int32)
        mesh.loop_triangles.foreach_get("material_index", mat_index)
    finally:
        evaluated.to_mesh_clear()
    world = np.array(obj.matrix_world, dtype=np.float64)
    co = co.reshape(-1, 3).astype(np.float64) @ world[:3, :3].T + world[:3, 3]
    a, b, c = (co[tri.reshape(-1, 3)[:, k]] for k in range(3))
    area = 0.5 * np.linalg.norm(np.cross(b - a, c - a), axis=1)
    if not np.isfinite(area).all() or area.sum() <= 0:
        raise SelectionError(f"{obj.name!r} has no surface area to sample.")
    rng = np.random.default_rng(seed)
    pick = rng.choice(nt, size=count, p=area / area.sum())
    u, v = rng.random(count), rng.random(count)
    flip = u + v > 1
    u[flip], v[flip] = 1 - u[flip], 1 - v[flip]
    points = a[pick] + u[:, None] * (b[pick] - a[pick]) + v[:, None] * (c[pick] - a[pick])
    palette = np.full((max(len(obj.material_slots), 1), 3), 0.8)
    for i, slot in enumerate(obj.material_slots):
        if slot.material is not None:
            palette[i] = tuple(slot.material.diffuse_color)[:3]
    colors = palette[np.clip(mat_index[pick], 0, len(palette) - 1)]
    return points.astype(np.float32), np.clip(colors, 0, 1).astype(np.float32)


def to_unit_frame(points: np.ndarray) -> tuple[np.ndarray, Placement]:
    """Centre the points on their bounding box and scale them to fill ``FILL`` of the unit
    ball; returns the moved points and the placement that undoes it."""
    lo, hi = points.min(axis=0), points.max(axis=0)
    centre = (lo + hi) / 2
    radius = float(np.linalg.norm(points - centre, axis=1).max())
    if not np.isfinite(radius) or radius <= 0:
        raise SelectionError("The selection is a single point: it has no size to start from.")
    scale = radius / FILL
    unit = ((points - centre) / scale).astype(np.float32)
    return unit, Placement(tuple(float(x) for x in centre), scale)
