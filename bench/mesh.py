"""Benchmark the mesh step (Gaussians -> textured GLB) on CPU: seconds per step.

Scene: N flat Gaussians laid on the surface of the procedural demo object (its face colours),
as a trained model leaves them (``mesh.synthetic.surface_gaussians``). Default ``MeshConfig``
(grid 128, 32 bake views at 384 px) with a 1024 x 1024 texture, face targets 20k and 50k.
Steps: grid (density), render (axis silhouettes for the iso-level, the bake views), marching cubes
(space carving, cavity fill, marching cubes), cleanup (floaters), decimation, unwrap (xatlas),
bake, export (GLB bytes).
Run: ``python bench/mesh.py [--quick] [--threads T] [--grid R] [--texture-size S]``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "backend"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import trimesh  # noqa: E402

from stabledreamer.mesh import MeshConfig, gaussians_to_mesh  # noqa: E402
from stabledreamer.mesh.synthetic import surface_gaussians  # noqa: E402
from stabledreamer.targets.procedural import demo_parts  # noqa: E402

STEPS = ("grid", "render", "marching_cubes", "cleanup", "decimation", "unwrap", "bake")


def demo_surface() -> tuple[trimesh.Trimesh, np.ndarray]:
    """The demo object as one mesh (Z-up, unit ball) and its face colours [F, 3]."""
    meshes, colours = [], []
    for _, mesh, colour in demo_parts():
        meshes.append(mesh)
        colours.append(np.tile(colour, (len(mesh.faces), 1)))
    return trimesh.util.concatenate(meshes), np.concatenate(colours)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="20k Gaussians, 20k faces only")
    ap.add_argument(
        "--threads", type=int, default=1, help="torch threads while meshing (MeshConfig.threads)"
    )
    ap.add_argument("--texture-size", type=int, default=1024)
    ap.add_argument("--grid", type=int, default=MeshConfig.grid, help="density grid resolution")
    args = ap.parse_args()
    surface, colours = demo_surface()
    counts = [20_000] if args.quick else [20_000, 100_000]
    targets = [20_000] if args.quick else [20_000, 50_000]
    print(
        f"mesh step on CPU: torch {torch.__version__}, {args.threads or 'default'} threads, "
        f"grid {args.grid}, texture {args.texture_size}^2, "
        f"load average before: {os.getloadavg()[0]:.2f}"
    )
    head = ["gaussians", "faces", *STEPS, "export", "total"]
    print(" | ".join(f"{h:>14}" for h in head))
    warm = surface_gaussians(surface, 2000, colours)  # imports and first-call costs
    gaussians_to_mesh(warm, MeshConfig(faces=2000, texture_size=128, grid=48, views=4))
    for n in counts:
        g = surface_gaussians(surface, n, colours)
        for faces in targets:
            cfg = MeshConfig(
                faces=faces, texture_size=args.texture_size, grid=args.grid, threads=args.threads
            )
            start = time.perf_counter()
            mesh = gaussians_to_mesh(g, cfg)
            t = time.perf_counter()
            mesh.glb()
            export = time.perf_counter() - t
            total = time.perf_counter() - start
            row = [n, len(mesh.faces), *(mesh.timings[s] for s in STEPS), export, total]
            print(" | ".join(f"{v:>14}" if isinstance(v, int) else f"{v:>14.2f}" for v in row))
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
