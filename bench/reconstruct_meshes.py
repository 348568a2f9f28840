"""Reconstruction quality with the default budget on simple coloured meshes other than the demo.

    python bench/reconstruct_meshes.py [--steps N] [--only NAME ...]

Builds each target in code (vertex colours, face colours, a texture), writes it to a temporary
file, runs ``reconstruct`` with the preset defaults and prints the metrics side by side.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import trimesh
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "backend"))

from stabledreamer.presets import get_preset  # noqa: E402
from stabledreamer.runs.reconstruct import run_reconstruction  # noqa: E402


def gradient_blob(path: Path) -> None:
    """A vertex-coloured squashed sphere with a torus around it (colour varies smoothly)."""
    s = trimesh.creation.icosphere(subdivisions=4, radius=0.6)
    s.apply_scale((1.0, 0.8, 1.2))
    t = trimesh.creation.torus(major_radius=0.75, minor_radius=0.12)
    parts = []
    for m, phase in ((s, 0.0), (t, 2.0)):
        v = m.vertices
        c = 0.5 + 0.5 * np.sin(np.stack([v[:, 0] * 3 + phase, v[:, 1] * 3 + 1, v[:, 2] * 3 + 2], 1))
        m.visual = trimesh.visual.ColorVisuals(m, vertex_colors=(c * 255).astype(np.uint8))
        parts.append(m)
    trimesh.util.concatenate(parts).export(path)


def blocks(path: Path) -> None:
    """Face-coloured boxes stacked off-centre (an L-shaped building-block toy)."""
    rng = np.random.default_rng(3)
    parts = []
    for centre, ext in [
        ((0, 0, -0.4), (1.2, 0.6, 0.4)),
        ((0.4, 0, 0.1), (0.4, 0.6, 0.6)),
        ((-0.3, 0.1, 0.25), (0.3, 0.3, 0.9)),
        ((0.4, 0, 0.55), (0.2, 0.2, 0.3)),
    ]:
        b = trimesh.creation.box(extents=ext)
        b.apply_translation(centre)
        b.visual.face_colors = np.append(rng.integers(30, 255, 3), 255)
        parts.append(b)
    trimesh.util.concatenate(parts).export(path)


def textured_cube(path: Path) -> None:
    """A cube with a coarse 4x4 checker texture of four colours (GLB with a PBR texture)."""
    cols = np.array([[220, 60, 40], [40, 160, 220], [240, 200, 40], [60, 180, 80]], np.uint8)
    tiles = np.indices((4, 4)).sum(0) % 4
    img = cols[tiles].repeat(32, 0).repeat(32, 1)
    box = trimesh.creation.box(extents=(1.0, 1.0, 1.0))
    box = box.unwrap() if hasattr(box, "unwrap") else box
    uv = (
        np.stack(
            [
                box.vertices[:, 0] + box.vertices[:, 2] * 0.3 + 0.5,
                box.vertices[:, 1] + box.vertices[:, 2] * 0.7 + 0.5,
            ],
            1,
        )
        % 1.0
    )
    mat = trimesh.visual.material.PBRMaterial(
        baseColorTexture=Image.fromarray(img), baseColorFactor=[255, 255, 255, 255]
    )
    box.visual = trimesh.visual.TextureVisuals(uv=uv, material=mat)
    box.export(path)


TARGETS = {
    "gradient_blob.ply": gradient_blob,
    "blocks.ply": blocks,
    "textured_cube.glb": textured_cube,
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=None, help="override the preset's step count")
    ap.add_argument("--only", nargs="*", default=None)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, make in TARGETS.items():
            if args.only and not any(o in name for o in args.only):
                continue
            path = Path(tmp) / name
            make(path)
            cfg = get_preset("reconstruct")
            cfg.target = str(path)
            cfg.debug_every = 0
            if args.steps:
                cfg.stages[-1].steps = args.steps
            t0 = time.perf_counter()
            m = run_reconstruction(cfg, Path(tmp) / f"run_{name}")
            rows.append((name, m, time.perf_counter() - t0))
    keys = ["psnr_heldout", "mesh_psnr_heldout", "chamfer", "gaussians", "steps"]
    print(f"\n{'target':<20}" + "".join(f"{k:>18}" for k in keys) + f"{'wall s':>9}")
    for name, m, wall in rows:
        cells = "".join(f"{m[k]:>18.4g}" if k in m else f"{'-':>18}" for k in keys)
        print(f"{name:<20}{cells}{wall:>9.0f}")


if __name__ == "__main__":
    main()
