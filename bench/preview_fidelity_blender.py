"""The Blender half of ``bench/preview_fidelity.py``: put Gaussians in the add-on's preview object
and render them with Blender itself (bpy in background mode), one process per call.

    python bench/preview_fidelity_blender.py JOB.json

JOB.json: ``addon`` (the folder holding the ``blender_addon`` package to test: this checkout, or
another one for today's look), ``gaussians`` (an .npz of means, scales, quats, rgb, opacities),
``cameras`` (world-to-camera matrices, OpenCV axes, and the vertical field of view), ``size``,
``modes``, ``look`` / ``shell_alpha`` (when the add-on has them), ``cycles_samples``,
``transparent_bounces``, ``cycles_filter`` (pixel filter width) and ``out`` (an .npz written with
one RGBA float image per mode and camera, straight alpha, display-referred sRGB).
"""

from __future__ import annotations

import inspect
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

MODES = ("workbench_flat", "workbench_studio", "cycles", "eevee")


def blender_camera(scene, viewmat, fov_y_deg: float):
    """A Blender camera equal to an OpenCV world-to-camera matrix (x right, y down, z forward):
    Blender's camera looks down its -Z with +Y up, so flip the y and z axes."""
    import bpy
    from mathutils import Matrix

    cam = scene.camera
    if cam is None:
        cam = bpy.data.objects.new("Fidelity Camera", bpy.data.cameras.new("Fidelity Camera"))
        scene.collection.objects.link(cam)
        scene.camera = cam
    m = np.linalg.inv(np.asarray(viewmat, dtype=np.float64)) @ np.diag([1.0, -1.0, -1.0, 1.0])
    cam.matrix_world = Matrix(m.tolist())
    cam.data.sensor_fit = "VERTICAL"
    cam.data.angle_y = math.radians(fov_y_deg)
    cam.data.clip_start = 0.01
    return cam


def setup_mode(scene, mode: str, job: dict) -> None:
    scene.render.film_transparent = True
    if mode.startswith("workbench"):
        scene.render.engine = "BLENDER_WORKBENCH"
        shading = scene.display.shading
        shading.light = "FLAT" if mode == "workbench_flat" else "STUDIO"
        shading.color_type = job.get("color_type", "MATERIAL")  # Solid mode's default
    elif mode == "cycles":
        scene.render.engine = "CYCLES"
        scene.cycles.device = "CPU"
        scene.cycles.samples = job["cycles_samples"]
        scene.cycles.use_denoising = False
        scene.cycles.transparent_max_bounces = job["transparent_bounces"]
        scene.cycles.filter_width = job.get("cycles_filter", 1.5)
    elif mode == "eevee":
        scene.render.engine = "BLENDER_EEVEE"
        scene.eevee.taa_render_samples = job.get("eevee_samples", 32)
    else:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


def render_rgba(scene, path: str) -> np.ndarray:
    import bpy
    from PIL import Image

    scene.render.filepath = path
    settings = scene.render.image_settings
    settings.file_format, settings.color_mode, settings.color_depth = "PNG", "RGBA", "8"
    bpy.ops.render.render(write_still=True)
    return np.asarray(Image.open(path).convert("RGBA"), dtype=np.float32) / 255.0


def main() -> None:
    job = json.loads(Path(sys.argv[1]).read_text())
    sys.path.insert(0, job["addon"])
    import bpy

    bpy.ops.wm.read_factory_settings(use_empty=True)
    from blender_addon import preview, splat_look, splat_nodes

    for name, value in (job.get("look_params") or {}).items():  # a study's settings
        if not hasattr(splat_look, name):
            raise SystemExit(f"splat_look has no {name}")
        setattr(splat_look, name, tuple(value) if isinstance(value, list) else value)

    if hasattr(splat_nodes, "register"):  # its render handler, as the installed add-on has it
        splat_nodes.register()

    scene = bpy.context.scene
    scene.render.resolution_x = scene.render.resolution_y = job["size"]
    scene.render.resolution_percentage = 100
    scene.view_settings.view_transform = "Standard"  # the reference picture is plain sRGB
    scene.view_settings.look = "None"

    blender_camera(scene, job["viewmats"][0], job["fov_y_deg"][0])  # a scene with its camera
    g = dict(np.load(job["gaussians"]))
    kw = {}
    params = inspect.signature(preview.update_preview).parameters
    for name in ("look", "shell_alpha"):
        if name in params and job.get(name) is not None:
            kw[name] = job[name]
    t = time.perf_counter()
    preview.update_preview(
        g["means"], g["scales"], g["quats"], g["rgb"], g["opacities"], point_cap=10**9, **kw
    )
    bpy.context.evaluated_depsgraph_get().update()
    build_s = time.perf_counter() - t

    images, seconds = {}, {}
    tmp = tempfile.mkdtemp(prefix="sd-fidelity-")
    for mode in job["modes"]:
        setup_mode(scene, mode, job)
        shots, ts = [], []
        for i, (viewmat, fov) in enumerate(zip(job["viewmats"], job["fov_y_deg"], strict=True)):
            blender_camera(scene, viewmat, fov)
            t = time.perf_counter()
            shots.append(render_rgba(scene, os.path.join(tmp, f"{mode}_{i}.png")))
            ts.append(time.perf_counter() - t)
        images[mode] = np.stack(shots)
        seconds[mode] = float(np.median(ts))
    np.savez_compressed(job["out"], **images)
    Path(job["out"] + ".json").write_text(json.dumps({"seconds": seconds, "build_s": build_s}))


if __name__ == "__main__":
    main()
