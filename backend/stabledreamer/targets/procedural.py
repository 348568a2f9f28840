"""A colourful toy target built in code, so the oracle has a target without any download.

A little creature of primitives in the frame of docs/architecture.md (Z up, metres, front facing
-Y, inside the unit ball): a red box body on four blue cylinder legs, a yellow sphere head with a
green cone hat, and on the front (-Y) side an orange cone nose and two dark eyes, so front and back
differ (a Janus-shaped reconstruction is visibly wrong). Flat, saturated face colours, ~2,500
faces.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import trimesh

from .target_mesh import TargetMesh, srgb_to_linear, target_from_scene

# (name, sRGB base colour) of each part.
COLOURS = {
    "body": (0.90, 0.15, 0.10),
    "leg": (0.10, 0.30, 0.90),
    "head": (0.95, 0.80, 0.10),
    "hat": (0.10, 0.75, 0.20),
    "nose": (1.00, 0.50, 0.00),
    "eye": (0.05, 0.05, 0.15),
}
Z_UP_TO_Y_UP = np.array(
    [[1.0, 0, 0, 0], [0, 0, 1.0, 0], [0, -1.0, 0, 0], [0, 0, 0, 1.0]]
)  # (x, y, z) -> (x, z, -y): our frame to glTF's, the inverse of the loader's conversion


def _translated(mesh: trimesh.Trimesh, offset) -> trimesh.Trimesh:
    mesh.apply_translation(offset)
    return mesh


def demo_parts() -> list[tuple[str, trimesh.Trimesh, tuple[float, float, float]]]:
    """The toy's parts as (name, mesh, sRGB colour), already placed."""
    c = trimesh.creation
    parts = [("body", _translated(c.box(extents=(0.55, 0.35, 0.5)), (0, 0, -0.15)), "body")]
    for i, (x, y) in enumerate([(-0.18, -0.1), (0.18, -0.1), (-0.18, 0.1), (0.18, 0.1)]):
        leg = c.cylinder(radius=0.07, height=0.35, sections=32)
        parts.append((f"leg{i}", _translated(leg, (x, y, -0.575)), "leg"))
    parts.append(
        ("head", _translated(c.icosphere(subdivisions=3, radius=0.25), (0, 0, 0.35)), "head")
    )
    hat = c.cone(radius=0.2, height=0.3, sections=32)  # base at z=0, apex at z=0.3
    parts.append(("hat", _translated(hat, (0, 0, 0.55)), "hat"))
    nose = c.cone(radius=0.06, height=0.15, sections=24)
    # Turn the cone's +Z axis to -Y (rotation about X by +90 deg), base inside the head.
    nose.apply_transform(trimesh.transformations.rotation_matrix(math.pi / 2, (1, 0, 0)))
    parts.append(("nose", _translated(nose, (0, -0.22, 0.33)), "nose"))
    for i, x in enumerate((-0.09, 0.09)):
        eye = c.icosphere(subdivisions=2, radius=0.045)
        parts.append((f"eye{i}", _translated(eye, (x, -0.21, 0.43)), "eye"))
    return [(name, mesh, COLOURS[key]) for name, mesh, key in parts]


def demo_target() -> trimesh.Trimesh:
    """The toy as one mesh with per-face sRGB colours (uint8 RGBA, as trimesh keeps them)."""
    meshes = []
    for _, mesh, rgb in demo_parts():
        mesh = mesh.copy()
        rgba = np.append(np.round(np.asarray(rgb) * 255), 255).astype(np.uint8)
        mesh.visual.face_colors = np.tile(rgba, (len(mesh.faces), 1))
        meshes.append(mesh)
    return trimesh.util.concatenate(meshes)


def demo_target_mesh() -> TargetMesh:
    """The toy as a normalised ``TargetMesh`` (what ``load_target`` gives for its files)."""
    return target_from_scene(demo_target())


def write_demo_target(path: str | Path) -> Path:
    """Write the toy as .glb (one node and PBR material per part, Y up) or .ply (face colours).

    glTF keeps base colours in linear space and is Y up; the colours and axes are converted so
    that ``load_target`` (and Blender's importer) give back the sRGB colours in Z-up.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".ply":
        demo_target().export(str(path))
    elif suffix == ".glb":
        scene = trimesh.Scene()
        for name, mesh, rgb in demo_parts():
            mesh = mesh.copy()
            factor = np.append(srgb_to_linear(rgb), 1.0)
            mesh.visual = trimesh.visual.TextureVisuals(
                material=trimesh.visual.material.PBRMaterial(
                    name=name, baseColorFactor=factor, metallicFactor=0.0, roughnessFactor=1.0
                )
            )
            mesh.apply_transform(Z_UP_TO_Y_UP)
            scene.add_geometry(mesh, geom_name=name, node_name=name)
        scene.export(str(path))
    else:
        raise ValueError(f"write_demo_target writes .glb or .ply, not '{suffix}' ({path.name})")
    return path
