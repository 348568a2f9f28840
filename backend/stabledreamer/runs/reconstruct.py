"""Oracle reconstruction of a target mesh: the offline main job (``reconstruct`` and ``demo``).

The target is normalised into the unit ball for training; every output is written back in the
target's own frame (its original centre and size; .glb/.gltf files in Blender's Z-up frame, as
Blender's importer shows them), so a result overlays its source.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from .. import gaussians as G
from ..atomic import write_json
from ..cameras import heldout_cameras
from ..config import RunConfig, StageConfig
from ..errors import ConfigError
from ..guidance.oracle import OracleGuidance
from ..ply import save_ply
from ..render import render
from ..targets.target_mesh import TargetMesh, load_target
from .debug_images import image_grid, save_png
from .folder import PROCEDURAL_DEMO, camera_mid, open_run, save_turntable
from .trainer import Progress, Trainer


def resolve_target(spec: str, run_dir: Path) -> TargetMesh:
    if spec == PROCEDURAL_DEMO:
        from ..targets.procedural import write_demo_target

        path = run_dir / "target.glb"
        if not path.is_file():
            write_demo_target(path)
        return load_target(path)
    return load_target(spec)


def to_target_frame(params: dict[str, Tensor], target: TargetMesh) -> dict[str, Tensor]:
    """Gaussians from the normalised training frame back to the target's own frame."""
    out = G.detached(params)
    out["means"] = torch.as_tensor(target.to_original(out["means"]), dtype=torch.float32)
    out["scales"] = out["scales"] - math.log(target.scale)
    return out


def psnr(a: Tensor, b: Tensor) -> Tensor:
    """PSNR in dB per image of [B, H, W, 3] images in [0, 1]."""
    mse = ((a - b) ** 2).flatten(1).mean(dim=1).clamp_min(1e-10)
    return -10.0 * torch.log10(mse)


@torch.no_grad()
def evaluate(params: dict[str, Tensor], oracle: OracleGuidance, cfg: RunConfig, run_dir: Path):
    """Held-out PSNR on white over the evaluation ring; writes heldout.png and turntable.png."""
    res = cfg.eval_resolution
    cams = heldout_cameras(
        res, res, distance=camera_mid(cfg.camera.distance), fov_y_deg=camera_mid(cfg.camera.fov_y_deg)
    )
    white = torch.ones(len(cams), 3)
    pred = render(params, cams, white).rgb.clamp(0, 1)
    truth = oracle.target_views(cams, white)
    scores = psnr(pred, truth)
    save_png(run_dir / "heldout.png", image_grid(torch.cat([pred, truth]), columns=len(cams)))
    save_turntable(params, cfg, run_dir)
    return {"psnr_heldout": float(scores.mean()), "psnr_heldout_views": scores.tolist()}


@torch.no_grad()
def mesh_step(
    params: dict[str, Tensor], target: TargetMesh, oracle: OracleGuidance, cfg: RunConfig, run_dir
) -> dict:
    """The textured mesh of the Gaussians (made in the normalised frame), written as ``mesh.glb``
    in the target's frame, and its metrics: ``chamfer`` (see mesh.chamfer) and
    ``mesh_psnr_heldout`` (rendered unlit from the held-out cameras of ``psnr_heldout``, on the
    same white). Writes ``mesh_heldout.png``. A mesh that cannot be made (say, a run so short
    that nothing is opaque yet) is reported as ``mesh_error`` and leaves the run's other outputs."""
    from ..mesh import MeshError, gaussians_to_mesh
    from ..mesh.chamfer import chamfer_distance
    from ..targets.raster import render_mesh

    start = time.perf_counter()
    try:
        mesh = gaussians_to_mesh(params, cfg.mesh)
    except MeshError as e:
        return {"mesh_error": str(e)}
    mesh.transformed(target.to_original).save(run_dir / "mesh.glb")
    res = cfg.eval_resolution
    cams = heldout_cameras(
        res, res, distance=camera_mid(cfg.camera.distance), fov_y_deg=camera_mid(cfg.camera.fov_y_deg)
    )
    white = torch.ones(len(cams), 3)
    pred, _ = render_mesh(
        mesh.to_target_mesh(), cams, torch.ones(3), supersample=cfg.oracle.supersample
    )
    truth = oracle.target_views(cams, white)
    scores = psnr(pred, truth)
    save_png(run_dir / "mesh_heldout.png", image_grid(torch.cat([pred, truth]), columns=len(cams)))
    m = cfg.mesh
    chamfer = chamfer_distance(
        mesh.vertices, mesh.faces, target, m.chamfer_samples, cfg.seed, m.chamfer_views,
        m.chamfer_resolution,
    )  # fmt: skip
    return {
        "chamfer": chamfer,
        "mesh_psnr_heldout": float(scores.mean()),
        "mesh_psnr_heldout_views": scores.tolist(),
        "mesh_faces": int(len(mesh.faces)),
        "mesh_seconds": round(time.perf_counter() - start, 2),
        "mesh_step_seconds": mesh.timings,
    }


def run_reconstruction(
    cfg: RunConfig,
    out: str | os.PathLike,
    *,
    overwrite: bool = False,
    resume: bool = False,
    callback: Callable[[Progress], bool | None] | None = None,
    device: str | None = None,
) -> dict:
    """Fit Gaussians to ``cfg.target``; returns the metrics (also in ``out/metrics.json``).

    ``device`` (auto | cpu | cuda | cuda:N) overrides ``cfg.device``, also on resume."""
    out = Path(out)

    def read_target(cfg: RunConfig) -> TargetMesh | None:
        # Read the target before touching the output folder: a bad mesh leaves nothing behind.
        return None if cfg.target == PROCEDURAL_DEMO else load_target(cfg.target)

    cfg, target = open_run(
        cfg, out, overwrite=overwrite, resume=resume, device=device, read_inputs=read_target
    )
    target = target or resolve_target(cfg.target, out)
    oracles: dict[int, OracleGuidance] = {}

    def factory(stage: StageConfig, index: int) -> OracleGuidance:
        if stage.guidance != "oracle":
            raise ConfigError(f"reconstruct runs oracle stages only, not {stage.guidance!r}")
        gen = torch.Generator().manual_seed(cfg.seed * 7919 + index)  # same bank on resume
        oracles[index] = OracleGuidance(
            target, cfg.oracle, cfg.camera, stage.resolution, stage.resolution, gen
        )
        return oracles[index]

    trainer = Trainer(cfg, out, factory, callback=callback)
    if resume:
        trainer.restore()
    start = time.perf_counter()
    params = trainer.train()
    train_s = trainer.state.elapsed_s
    oracle = oracles.get(len(cfg.stages) - 1) or factory(cfg.stages[-1], len(cfg.stages) - 1)
    metrics = evaluate(params, oracle, cfg, out)
    save_ply(to_target_frame(params, target), out / "gaussians.ply")
    if cfg.mesh.enabled:
        metrics.update(mesh_step(params, target, oracle, cfg, out))
    metrics.update(
        gaussians=G.count(params),
        steps=cfg.total_steps,
        seconds=round(train_s, 2),
        seconds_this_session=round(time.perf_counter() - start, 2),
        preset=cfg.preset,
        target=cfg.target,
        oracle_mode=cfg.oracle.mode,
    )
    write_json(out / "metrics.json", metrics)
    return metrics
