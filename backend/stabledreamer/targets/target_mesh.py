"""Target meshes for the oracle: load a coloured mesh, put it in the unit ball, keep its colours.

A ``TargetMesh`` is a triangle mesh in the *normalised* frame (Z up, front -Y, inside the unit
ball) with exactly one colour source, all unlit base colour in sRGB, [0, 1]:

- ``vertex_colors`` [V, 3], interpolated over each face;
- ``face_colors`` [F, 3], flat;
- ``uvs`` [F, 3, 2] (one UV per face corner, origin bottom-left as in OBJ and trimesh) with a
  ``texture`` [Ht, Wt, 3], sampled bilinearly with wrap (glTF's default REPEAT).

Normalisation: ``normalised = (original - center) * scale`` with ``center`` the bounding-box centre
and ``scale`` putting the farthest vertex at radius ``NORMALISED_RADIUS`` (0.9), so the object
fills the unit ball (docs/architecture.md) with a margin (the training cameras frame radius 1).
"Original" is the target's own frame *in Blender's axes*: for .glb/.gltf that is glTF's Y-up frame
turned Z-up the way Blender's importer does, (x, y, z)_gltf -> (x, -z, y), so results written back
with ``to_original`` overlay the imported source in Blender.

Colour decisions (see ``load_target``):

- glTF stores ``baseColorFactor`` and ``COLOR_0`` in *linear* space (glTF 2.0 spec, 3.9.2 and
  3.7.2.1); they are converted to sRGB on load (``gltf_linear_colors=False`` turns that off for
  files written by tools that put sRGB values there). Textures are sRGB and used as they are;
  a texture's ``baseColorFactor`` multiplies it in linear space. PLY and OBJ colours are taken as
  sRGB. OBJ ``Kd`` is ignored when there is a ``map_Kd`` texture (trimesh writes a default Kd of
  0.4 next to textures, which would darken them if multiplied).
- Several geometries are merged into one colour source: all flat or vertex colours -> vertex
  colours (flat-coloured parts get their own vertices per face, which is exact); any texture ->
  one texture *atlas*: the textures are stacked vertically and ``texture_rects`` [F, 4] gives each
  face's rectangle (row, column, height, width) in it, so UV wrap and bilinear filtering stay
  exactly those of each source texture. Untextured parts of such a mesh use 1x1 palette cells of
  the atlas (vertex-coloured parts there become flat: the mean of each face's corners).
- Alpha is ignored (targets are opaque); textures larger than ``max_texture_size`` are reduced.
- Geometry without colours is mid grey (0.5).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import trimesh
from PIL import Image
from torch import Tensor

from ..errors import StableDreamerError

NORMALISED_RADIUS = 0.9
"""Distance of the farthest vertex from the origin after normalisation (unit ball, 10% margin)."""
DEFAULT_GREY = 0.5
"""Base colour (sRGB) of geometry that has no colour at all."""
SUPPORTED_SUFFIXES = (".glb", ".gltf", ".obj", ".ply")
Y_UP_TO_Z_UP = np.array(
    [[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]]
)  # (x, y, z)_gltf -> (x, -z, y), as Blender's glTF importer does


class TargetError(StableDreamerError):
    """A target mesh cannot be used; the message names the problem and the fix."""


def srgb_to_linear(c: np.ndarray) -> np.ndarray:
    c = np.asarray(c, dtype=np.float64)
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(c: np.ndarray) -> np.ndarray:
    c = np.clip(np.asarray(c, dtype=np.float64), 0.0, 1.0)
    return np.where(c <= 0.0031308, c * 12.92, 1.055 * c ** (1 / 2.4) - 0.055)


@dataclass
class TargetMesh:
    """A triangle mesh in the normalised frame with one unlit sRGB colour source."""

    vertices: Tensor  # [V, 3] float32, normalised frame
    faces: Tensor  # [F, 3] int64
    vertex_colors: Tensor | None = None  # [V, 3] float32 sRGB in [0, 1]
    face_colors: Tensor | None = None  # [F, 3] float32 sRGB in [0, 1]
    uvs: Tensor | None = None  # [F, 3, 2] float32, per corner, origin bottom-left
    texture: Tensor | None = None  # [Ht, Wt, 3] float32 sRGB in [0, 1]
    texture_rects: Tensor | None = None  # [F, 4] int64 (row, col, h, w) in texture; None: whole
    center: Tensor = field(default=None)  # [3] float64, bounding-box centre of the original
    scale: float = 1.0  # normalised = (original - center) * scale

    def __post_init__(self) -> None:
        if self.center is None:
            self.center = torch.zeros(3, dtype=torch.float64)
        V, F = self.vertices.shape[0], self.faces.shape[0]
        if self.vertices.shape != (V, 3) or self.faces.shape != (F, 3):
            raise ValueError(
                f"TargetMesh needs vertices [V,3] and faces [F,3]; got "
                f"{tuple(self.vertices.shape)} and {tuple(self.faces.shape)}"
            )
        sources = [
            self.vertex_colors is not None,
            self.face_colors is not None,
            self.uvs is not None or self.texture is not None,
        ]
        if sum(sources) != 1:
            raise ValueError(
                "TargetMesh needs exactly one colour source: vertex_colors, face_colors, or "
                "uvs + texture"
            )
        if self.vertex_colors is not None and self.vertex_colors.shape != (V, 3):
            raise ValueError(
                f"vertex_colors must be [{V},3]; got {tuple(self.vertex_colors.shape)}"
            )
        if self.face_colors is not None and self.face_colors.shape != (F, 3):
            raise ValueError(f"face_colors must be [{F},3]; got {tuple(self.face_colors.shape)}")
        if sources[2]:
            if self.uvs is None or self.texture is None:
                raise ValueError("a textured TargetMesh needs both uvs [F,3,2] and texture")
            if self.uvs.shape != (F, 3, 2) or self.texture.ndim != 3 or self.texture.shape[2] != 3:
                raise ValueError(
                    f"uvs must be [{F},3,2] and texture [Ht,Wt,3]; got {tuple(self.uvs.shape)} "
                    f"and {tuple(self.texture.shape)}"
                )
            if self.texture_rects is not None and self.texture_rects.shape != (F, 4):
                raise ValueError(f"texture_rects must be [{F},4]")

    @property
    def colour_source(self) -> str:
        """'vertex', 'face' or 'texture'."""
        if self.vertex_colors is not None:
            return "vertex"
        if self.face_colors is not None:
            return "face"
        return "texture"

    def to_original(self, points: Tensor) -> Tensor:
        """Points [..., 3] from the normalised frame to the target's own (Z-up) frame."""
        c = self.center.to(points)
        return points / self.scale + c

    def to_normalised(self, points: Tensor) -> Tensor:
        """Points [..., 3] from the target's own (Z-up) frame to the normalised frame."""
        c = self.center.to(points)
        return (points - c) * self.scale


# --------------------------------------------------------------------------------------------
# Loading


@dataclass
class _Part:
    """One scene geometry in world coordinates with its own colour source (numpy)."""

    vertices: np.ndarray  # [v, 3] float64
    faces: np.ndarray  # [f, 3] int64
    kind: str  # 'vertex' | 'face' | 'texture'
    colors: np.ndarray | None = None  # [v, 3] or [f, 3] sRGB float
    uvs: np.ndarray | None = None  # [f, 3, 2]
    image: np.ndarray | None = None  # [h, w, 3] sRGB float


def load_target(
    path: str | Path, gltf_linear_colors: bool = True, max_texture_size: int = 2048
) -> TargetMesh:
    """Load a .glb/.gltf/.obj/.ply mesh with its colours, normalised into the unit ball.

    glTF is Y-up and is turned Z-up, (x, y, z) -> (x, -z, y); OBJ and PLY are taken as Z-up
    already (Blender's own OBJ/PLY exporters write Z-up by default with "forward -Y" off; files
    from Y-up tools should be converted to .glb first).
    """
    path = Path(path)
    if not path.is_file():
        raise TargetError(
            f"target mesh not found: {path}; check the path (relative to {Path.cwd()})"
        )
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise TargetError(
            f"unsupported target format '{suffix}' ({path.name}); export it as .glb, .gltf, "
            ".obj or .ply"
        )
    try:
        scene = trimesh.load(str(path), force="scene", process=False)
    except Exception as e:  # trimesh raises many kinds for corrupt files
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise TargetError(
            f"could not read {path.name} as {suffix[1:]} ({first}); check that it opens in "
            "Blender and re-export it as .glb"
        ) from e
    is_gltf = suffix in (".glb", ".gltf")
    return target_from_scene(
        scene,
        y_up=is_gltf,
        linear_colors=is_gltf and gltf_linear_colors,
        max_texture_size=max_texture_size,
        name=path.name,
    )


def target_from_scene(
    scene: trimesh.Scene | trimesh.Trimesh,
    y_up: bool = False,
    linear_colors: bool = False,
    max_texture_size: int = 2048,
    name: str = "target",
) -> TargetMesh:
    """A normalised ``TargetMesh`` from a trimesh scene or mesh (geometries merged, colours kept).

    ``y_up`` turns glTF's Y-up into Z-up; ``linear_colors`` treats material factors and vertex
    colours as linear (glTF) and converts them to sRGB.
    """
    if isinstance(scene, trimesh.Trimesh):
        scene = trimesh.Scene(scene)
    parts = []
    for node in scene.graph.nodes_geometry:
        transform, geom_name = scene.graph[node]
        geom = scene.geometry[geom_name]
        if not isinstance(geom, trimesh.Trimesh) or len(geom.faces) == 0:
            continue
        parts.append(_part_from_trimesh(geom, transform, linear_colors, max_texture_size))
    if not parts:
        raise TargetError(
            f"{name} has no triangle faces (a point cloud or lines?); export a surface mesh"
        )
    verts, faces, colours = _merge(parts)
    if not np.isfinite(verts).all():
        raise TargetError(f"{name} has non-finite vertex coordinates; clean the mesh and re-export")
    if y_up:
        verts = verts @ Y_UP_TO_Z_UP.T
    lo, hi = verts.min(0), verts.max(0)
    center = 0.5 * (lo + hi)
    radius = float(np.linalg.norm(verts - center, axis=1).max())
    if not radius > 1e-12 * max(1.0, float(np.abs(center).max())):
        raise TargetError(
            f"{name} is degenerate (all vertices at one point); export the real geometry"
        )
    scale = NORMALISED_RADIUS / radius
    return TargetMesh(
        vertices=torch.from_numpy((verts - center) * scale).float(),
        faces=torch.from_numpy(faces).long(),
        center=torch.from_numpy(center),
        scale=scale,
        **{k: torch.from_numpy(v) for k, v in colours.items()},
    )


def _colors01(c: np.ndarray) -> np.ndarray:
    """trimesh colours (uint8 or float, RGB or RGBA) -> float64 RGB in [0, 1]."""
    c = np.asarray(c)
    if c.dtype.kind in "ui":
        c = c.astype(np.float64) / 255.0
    return np.clip(c[..., :3].astype(np.float64), 0.0, 1.0)


def _image01(image: Image.Image, max_size: int) -> np.ndarray:
    image = image.convert("RGB")
    if max(image.size) > max_size:
        f = max_size / max(image.size)
        size = (max(1, round(image.size[0] * f)), max(1, round(image.size[1] * f)))
        image = image.resize(size, Image.Resampling.BOX)
    return np.asarray(image, dtype=np.float64) / 255.0


def _part_from_trimesh(
    mesh: trimesh.Trimesh, transform: np.ndarray, linear: bool, max_texture_size: int
) -> _Part:
    v = np.asarray(mesh.vertices, dtype=np.float64)
    v = v @ transform[:3, :3].T + transform[:3, 3]
    f = np.asarray(mesh.faces, dtype=np.int64)
    to_srgb = linear_to_srgb if linear else (lambda c: c)
    grey = np.full((len(f), 3), DEFAULT_GREY)
    visual = mesh.visual
    if isinstance(visual, trimesh.visual.TextureVisuals):
        mat = visual.material
        image = getattr(mat, "baseColorTexture", None)
        if image is None:
            image = getattr(mat, "image", None)
        factor = getattr(mat, "baseColorFactor", None)
        if factor is None and image is None:
            factor = getattr(mat, "diffuse", None)  # OBJ Kd without map_Kd
        factor = None if factor is None else _colors01(factor)
        if image is not None and visual.uv is not None and len(visual.uv) == len(v):
            tex = _image01(image, max_texture_size)
            if factor is not None and not np.allclose(factor, 1.0):
                tex = linear_to_srgb(srgb_to_linear(tex) * factor) if linear else tex * factor
            uv = np.asarray(visual.uv, dtype=np.float64)[f]
            return _Part(v, f, "texture", uvs=uv, image=tex)
        vc = visual.vertex_attributes.get("color") if hasattr(visual, "vertex_attributes") else None
        if vc is not None and len(vc) == len(v):  # glTF COLOR_0 next to an untextured material
            lin = _colors01(vc) * (1.0 if factor is None else factor)
            return _Part(v, f, "vertex", colors=to_srgb(lin))
        if factor is None:
            return _Part(v, f, "face", colors=grey)
        return _Part(v, f, "face", colors=np.tile(to_srgb(factor), (len(f), 1)))
    kind = getattr(visual, "kind", None)
    if kind == "vertex":
        return _Part(v, f, "vertex", colors=to_srgb(_colors01(visual.vertex_colors)))
    if kind == "face":
        return _Part(v, f, "face", colors=to_srgb(_colors01(visual.face_colors)))
    return _Part(v, f, "face", colors=grey)


def _merge(parts: list[_Part]) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Concatenate parts into (vertices, faces, colour fields of ``TargetMesh``), float32."""
    kinds = {p.kind for p in parts}
    if "texture" in kinds:
        return _merge_textured(parts)
    verts, faces, cols, offset = [], [], [], 0
    for p in parts:
        if "vertex" in kinds and p.kind == "face":  # unmerge: each face its own 3 vertices
            pv = p.vertices[p.faces].reshape(-1, 3)
            pf = np.arange(3 * len(p.faces), dtype=np.int64).reshape(-1, 3)
            pc = np.repeat(p.colors, 3, axis=0)
        else:
            pv, pf, pc = p.vertices, p.faces, p.colors
        verts.append(pv)
        faces.append(pf + offset)
        cols.append(pc)
        offset += len(pv)
    verts, faces, cols = np.concatenate(verts), np.concatenate(faces), np.concatenate(cols)
    if "vertex" in kinds:
        verts, faces, keep = _drop_unreferenced(verts, faces)
        return verts, faces, {"vertex_colors": cols[keep].astype(np.float32)}
    verts, faces, _ = _drop_unreferenced(verts, faces)
    return verts, faces, {"face_colors": cols.astype(np.float32)}


def _merge_textured(parts: list[_Part]) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    textured = [p for p in parts if p.kind == "texture"]
    if len(parts) == 1:
        p = parts[0]
        verts, faces, _ = _drop_unreferenced(p.vertices, p.faces)
        return (
            verts,
            faces,
            {"uvs": p.uvs.astype(np.float32), "texture": p.image.astype(np.float32)},
        )
    # Flat colours of untextured faces go to a palette of 1x1 cells below the stacked textures.
    flat = [
        p.colors[p.faces].mean(1) if p.kind == "vertex" else p.colors
        for p in parts
        if p.kind != "texture"
    ]
    palette, inverse = (
        np.unique(np.round(np.concatenate(flat) * 255.0) / 255.0, axis=0, return_inverse=True)
        if flat
        else (np.zeros((0, 3)), np.zeros(0, dtype=np.int64))
    )
    inverse = inverse.reshape(-1)
    width = max(p.image.shape[1] for p in textured)
    width = max(width, min(len(palette), 256)) if len(palette) else width
    pal_rows = math.ceil(len(palette) / width)
    height = sum(p.image.shape[0] for p in textured) + pal_rows
    atlas = np.zeros((height, width, 3))
    pal_row0 = height - pal_rows
    if len(palette):
        cells = np.zeros((pal_rows * width, 3))
        cells[: len(palette)] = palette
        atlas[pal_row0:] = cells.reshape(pal_rows, width, 3)
    verts, faces, uvs, rects = [], [], [], []
    offset = row = flat_i = 0
    for p in parts:
        nf = len(p.faces)
        if p.kind == "texture":
            h, w = p.image.shape[:2]
            atlas[row : row + h, :w] = p.image
            rects.append(np.tile([row, 0, h, w], (nf, 1)))
            uvs.append(p.uvs)
            row += h
        else:
            cell = inverse[flat_i : flat_i + nf]
            flat_i += nf
            rects.append(
                np.stack(
                    [
                        pal_row0 + cell // width,
                        cell % width,
                        np.ones_like(cell),
                        np.ones_like(cell),
                    ],
                    axis=1,
                )
            )
            uvs.append(np.full((nf, 3, 2), 0.5))
        verts.append(p.vertices)
        faces.append(p.faces + offset)
        offset += len(p.vertices)
    verts, faces, _ = _drop_unreferenced(np.concatenate(verts), np.concatenate(faces))
    return (
        verts,
        faces,
        {
            "uvs": np.concatenate(uvs).astype(np.float32),
            "texture": atlas.astype(np.float32),
            "texture_rects": np.concatenate(rects).astype(np.int64),
        },
    )


def _drop_unreferenced(
    verts: np.ndarray, faces: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Vertices used by faces only (so the bounding box is the surface's); returns kept ids."""
    keep, new_faces = np.unique(faces.reshape(-1), return_inverse=True)
    return verts[keep], new_faces.reshape(-1, 3).astype(np.int64), keep
