"""A catalogue of known objects made in code: ground truth for the example-based text prior.

Each entry is a prompt, a builder of flat-coloured primitives in the frame of docs/architecture.md
(Z up, front facing -Y, roughly inside the unit ball) and whether the object has a clear front (a
face, a handle, headlights, a door): on those a second face at the back (a multi-face, "Janus",
result) is visible and measured. No binary assets: everything is trimesh primitives, low-poly
enough that rendering the whole catalogue's bank stays within the build budget.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import trimesh

from .procedural import demo_parts
from .target_mesh import TargetMesh, target_from_scene

Part = tuple[trimesh.Trimesh, tuple[float, float, float]]  # (placed mesh, sRGB colour)
C = trimesh.creation
SECTIONS = 16  # segments of cylinders and cones: low-poly keeps the bank's renders fast


@dataclass(frozen=True)
class CatalogueEntry:
    prompt: str
    build: Callable[[], list[Part]]
    has_front: bool
    """True when the object's -Y side is visibly its front (a face, a handle, headlights)."""


def _at(mesh: trimesh.Trimesh, x: float, y: float, z: float) -> trimesh.Trimesh:
    mesh.apply_translation((x, y, z))
    return mesh


def _rot(mesh: trimesh.Trimesh, angle: float, axis) -> trimesh.Trimesh:
    mesh.apply_transform(trimesh.transformations.rotation_matrix(angle, axis))
    return mesh


def _box(ex, ey, ez, x=0.0, y=0.0, z=0.0) -> trimesh.Trimesh:
    return _at(C.box(extents=(ex, ey, ez)), x, y, z)


def _cyl(r, h, x=0.0, y=0.0, z=0.0, sections=SECTIONS) -> trimesh.Trimesh:
    return _at(C.cylinder(radius=r, height=h, sections=sections), x, y, z)  # centred, along Z


def _cone(r, h, x=0.0, y=0.0, z=0.0) -> trimesh.Trimesh:
    return _at(C.cone(radius=r, height=h, sections=SECTIONS), x, y, z)  # base at z, apex up


def _ball(r, x=0.0, y=0.0, z=0.0, sub=2) -> trimesh.Trimesh:
    return _at(C.icosphere(subdivisions=sub, radius=r), x, y, z)


def _facing_front(mesh: trimesh.Trimesh) -> trimesh.Trimesh:
    """Turn a mesh built along +Z so that it points to -Y (the front)."""
    return _rot(mesh, math.pi / 2, (1, 0, 0))


def creature() -> list[Part]:
    return [(m, rgb) for _, m, rgb in demo_parts()]


def mug() -> list[Part]:
    white, blue = (0.92, 0.92, 0.88), (0.15, 0.35, 0.85)
    body = _cyl(0.38, 0.8, sections=24)
    ring = C.torus(0.22, 0.06, major_sections=16, minor_sections=8)  # in the XY plane
    handle = _at(_rot(ring, math.pi / 2, (0, 1, 0)), 0, -0.4, 0)  # in the YZ plane, out to -Y
    band = _cyl(0.39, 0.12, z=0.2, sections=24)
    coffee = _cyl(0.34, 0.02, z=0.395, sections=24)
    return [(body, white), (band, blue), (handle, white), (coffee, (0.30, 0.15, 0.05))]


def car() -> list[Part]:
    red, black, glass = (0.85, 0.10, 0.10), (0.08, 0.08, 0.08), (0.55, 0.80, 0.95)
    parts = [(_box(0.6, 1.3, 0.3, z=-0.05), red), (_box(0.5, 0.65, 0.25, y=0.1, z=0.22), glass)]
    for x in (-0.31, 0.31):
        for y in (-0.4, 0.4):
            parts.append((_rot(_cyl(0.15, 0.1), math.pi / 2, (0, 1, 0)), black))
            parts[-1][0].apply_translation((x, y, -0.2))
    for x in (-0.2, 0.2):  # yellow headlights at the front, red tail lights at the back
        parts.append((_box(0.14, 0.04, 0.08, x=x, y=-0.66, z=0.0), (1.0, 0.9, 0.2)))
        parts.append((_box(0.14, 0.04, 0.06, x=x, y=0.66, z=0.0), (0.45, 0.0, 0.0)))
    parts.append((_box(0.5, 0.04, 0.06, y=-0.66, z=-0.12), (0.7, 0.7, 0.7)))  # bumper
    return parts


def snowman() -> list[Part]:
    white, black = (0.95, 0.95, 0.97), (0.05, 0.05, 0.05)
    parts = [(_ball(0.38, z=-0.4), white), (_ball(0.28, z=0.15), white)]
    parts.append((_ball(0.2, z=0.55), white))
    nose = _facing_front(_cone(0.05, 0.22))
    parts.append((_at(nose, 0, -0.18, 0.55), (1.0, 0.45, 0.0)))
    for x in (-0.07, 0.07):
        parts.append((_ball(0.03, x, -0.18, 0.62, sub=1), black))
    for z in (0.05, 0.2):
        parts.append((_ball(0.035, 0, -0.27, z, sub=1), black))  # buttons
    parts.append((_cyl(0.2, 0.03, z=0.72), black))
    parts.append((_cyl(0.13, 0.2, z=0.83), black))  # hat
    return parts


def house() -> list[Part]:
    walls = _box(0.9, 0.8, 0.6, z=-0.2)
    ridge = np.array(
        [[-0.5, -0.45, 0.1], [0.5, -0.45, 0.1], [-0.5, 0.45, 0.1], [0.5, 0.45, 0.1],
         [-0.5, 0.0, 0.55], [0.5, 0.0, 0.55]]
    )  # fmt: skip
    roof = trimesh.convex.convex_hull(ridge)
    parts = [(walls, (0.95, 0.85, 0.60)), (roof, (0.70, 0.15, 0.10))]
    parts.append((_box(0.2, 0.04, 0.35, y=-0.41, z=-0.32), (0.40, 0.22, 0.08)))  # door
    for x in (-0.3, 0.3):
        parts.append((_box(0.16, 0.04, 0.16, x=x, y=-0.41, z=-0.1), (0.30, 0.60, 0.95)))
    parts.append((_box(0.12, 0.12, 0.3, x=0.25, y=0.2, z=0.5), (0.45, 0.45, 0.45)))  # chimney
    return parts


def robot() -> list[Part]:
    grey, dark = (0.60, 0.62, 0.68), (0.20, 0.20, 0.25)
    parts = [(_box(0.5, 0.35, 0.55, z=-0.15), grey), (_box(0.36, 0.3, 0.28, z=0.32), grey)]
    for x in (-0.08, 0.08):
        parts.append((_box(0.08, 0.03, 0.06, x=x, y=-0.16, z=0.36), (0.1, 0.9, 0.95)))  # eyes
    parts.append((_box(0.18, 0.03, 0.04, y=-0.16, z=0.24), (0.9, 0.1, 0.1)))  # mouth
    parts.append((_box(0.2, 0.03, 0.2, y=-0.19, z=-0.1), (0.95, 0.75, 0.1)))  # chest panel
    for x in (-0.32, 0.32):
        parts.append((_box(0.1, 0.12, 0.45, x=x, z=-0.15), dark))  # arms
    for x in (-0.13, 0.13):
        parts.append((_box(0.14, 0.16, 0.3, x=x, z=-0.6), dark))  # legs
    parts.append((_cyl(0.015, 0.15, z=0.53), dark))
    parts.append((_ball(0.04, z=0.62, sub=1), (0.9, 0.1, 0.1)))  # antenna
    return parts


def chair() -> list[Part]:
    wood, cushion = (0.55, 0.33, 0.15), (0.20, 0.55, 0.30)
    parts = [(_box(0.7, 0.7, 0.08, z=-0.05), wood), (_box(0.6, 0.6, 0.04, z=0.0), cushion)]
    for x in (-0.3, 0.3):
        for y in (-0.3, 0.3):
            parts.append((_box(0.07, 0.07, 0.55, x=x, y=y, z=-0.35), wood))
    parts.append((_box(0.7, 0.07, 0.6, y=0.31, z=0.3), wood))  # the back rest, at +Y
    return parts


def table() -> list[Part]:
    return [
        (_cyl(0.75, 0.06, z=0.25, sections=24), (0.75, 0.55, 0.30)),
        (_cyl(0.07, 0.6, z=-0.07), (0.25, 0.25, 0.25)),
        (_cyl(0.35, 0.05, z=-0.4), (0.25, 0.25, 0.25)),
    ]


def mushroom() -> list[Part]:
    v = C.icosphere(subdivisions=2, radius=0.55).vertices
    v = v[v[:, 2] >= -1e-9] * (1.0, 1.0, 0.7) + (0.0, 0.0, 0.1)  # the upper half, squashed
    cap = trimesh.convex.convex_hull(v)
    parts = [(_cyl(0.16, 0.6, z=-0.25), (0.95, 0.90, 0.78)), (cap, (0.85, 0.10, 0.10))]
    for a in range(5):
        th = 2 * math.pi * a / 5
        parts.append(
            (_ball(0.07, 0.3 * math.cos(th), 0.3 * math.sin(th), 0.42, sub=1), (1.0, 1.0, 1.0))
        )
    parts.append((_ball(0.07, 0, 0, 0.5, sub=1), (1.0, 1.0, 1.0)))
    return parts


def traffic_cone() -> list[Part]:
    orange, white = (1.0, 0.45, 0.05), (0.97, 0.97, 0.97)
    return [
        (_box(0.8, 0.8, 0.08, z=-0.6), (0.1, 0.1, 0.1)),
        (_cone(0.32, 1.2, z=-0.56), orange),
        (_cyl(0.235, 0.14, z=-0.2), white),
        (_cyl(0.145, 0.1, z=0.15), white),
    ]


def pine_tree() -> list[Part]:
    green = (0.10, 0.50, 0.20)
    parts = [(_cyl(0.09, 0.4, z=-0.6), (0.45, 0.28, 0.12))]
    for z, r in ((-0.45, 0.55), (-0.15, 0.43), (0.15, 0.3)):
        parts.append((_cone(r, 0.55, z=z), green))
    parts.append((_ball(0.06, z=0.72, sub=1), (1.0, 0.85, 0.1)))
    return parts


def rocket() -> list[Part]:
    parts = [(_cyl(0.2, 0.9, z=-0.05), (0.92, 0.92, 0.95))]
    parts.append((_cone(0.2, 0.4, z=0.4), (0.9, 0.1, 0.1)))
    for k in range(3):
        fin = _box(0.03, 0.25, 0.3, y=0.27, z=-0.4)
        parts.append((_rot(fin, 2 * math.pi * k / 3 + math.pi / 3, (0, 0, 1)), (0.15, 0.25, 0.8)))
    parts.append((_cyl(0.17, 0.12, z=-0.56), (0.3, 0.3, 0.3)))  # nozzle
    return parts


def lamp() -> list[Part]:
    th = np.linspace(0, 2 * math.pi, SECTIONS, endpoint=False)
    ring = np.stack([np.cos(th), np.sin(th), np.zeros_like(th)], axis=1)
    shade = trimesh.convex.convex_hull(np.concatenate([ring * 0.4, ring * 0.2 + (0, 0, 0.35)]))
    return [
        (_cyl(0.3, 0.06, z=-0.65), (0.2, 0.2, 0.25)),
        (_cyl(0.03, 0.75, z=-0.25), (0.75, 0.7, 0.6)),
        (_at(shade, 0, 0, 0.05), (0.98, 0.85, 0.45)),
    ]


CATALOGUE: tuple[CatalogueEntry, ...] = (
    CatalogueEntry("a toy creature", creature, True),
    CatalogueEntry("a coffee mug", mug, True),
    CatalogueEntry("a toy car", car, True),
    CatalogueEntry("a snowman", snowman, True),
    CatalogueEntry("a small house", house, True),
    CatalogueEntry("a robot", robot, True),
    CatalogueEntry("a wooden chair", chair, True),
    CatalogueEntry("a round table", table, False),
    CatalogueEntry("a mushroom", mushroom, False),
    CatalogueEntry("a traffic cone", traffic_cone, False),
    CatalogueEntry("a pine tree", pine_tree, False),
    CatalogueEntry("a rocket", rocket, False),
    CatalogueEntry("a table lamp", lamp, False),
)


def entry(prompt: str) -> CatalogueEntry:
    for e in CATALOGUE:
        if e.prompt == prompt:
            return e
    raise KeyError(f"{prompt!r} is not in the catalogue; it has {[e.prompt for e in CATALOGUE]}")


def to_trimesh(parts: list[Part]) -> trimesh.Trimesh:
    """The parts as one mesh with per-face sRGB colours."""
    meshes = []
    for mesh, rgb in parts:
        mesh = mesh.copy()
        rgba = np.append(np.round(np.asarray(rgb) * 255), 255).astype(np.uint8)
        mesh.visual.face_colors = np.tile(rgba, (len(mesh.faces), 1))
        meshes.append(mesh)
    return trimesh.util.concatenate(meshes)


def target_mesh(prompt: str) -> TargetMesh:
    """The catalogue object as a normalised ``TargetMesh`` (the ground truth of its prompt)."""
    return target_from_scene(to_trimesh(entry(prompt).build()), name=prompt)
