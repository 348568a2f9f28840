"""Text to 3D: the two-stage StableDreamer recipe as a run (``stabledreamer generate``).

The recipe is configuration (``presets.preview/standard/final``): stage 1 DeepFloyd IF shapes the
geometry, stage 2 Stable Diffusion refines colour and detail; the trainer does the rest. Writes
the run folder of docs/architecture.md: config, checkpoints, debug strips, gaussians.ply, mesh.glb,
turntable.png and metrics.json (losses and seconds per step per stage, peak memory).
"""

from __future__ import annotations

import os
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from .. import gaussians as G
from ..atomic import write_json
from ..config import RunConfig, StageConfig
from ..errors import ConfigError, InputError
from ..device import DeviceError, resolve_device
from ..guidance.base import Guidance
from ..ply import load_ply, save_ply
from .folder import open_run, save_turntable
from .trainer import Progress, Trainer

MAX_PROMPT_CHARS = 2000
"""Longer prompts are refused (CLIP reads 77 tokens, T5 77 in diffusers' IF pipeline)."""


def check_prompt(prompt: str) -> str:
    prompt = " ".join(prompt.split())
    if not prompt:
        raise InputError('the prompt is empty; say what to make, e.g. "a ceramic teapot"')
    if len(prompt) > MAX_PROMPT_CHARS:
        raise InputError(
            f"the prompt has {len(prompt)} characters; keep it under {MAX_PROMPT_CHARS} "
            "(the text encoders read about 77 tokens)"
        )
    return prompt


def build_guidance(
    cfg: RunConfig, stage: StageConfig, device: torch.device | str | None = None
) -> Guidance:
    """The stage's text guidance on ``device`` (default: ``cfg.device``), the trainer's."""
    device = resolve_device(cfg.device) if device is None else torch.device(device)
    if stage.guidance == "deepfloyd_if":
        from ..guidance.deepfloyd_if import DeepFloydIFGuidance

        return DeepFloydIFGuidance(cfg.prompt, cfg.deepfloyd_if, device=device)
    if stage.guidance == "stable_diffusion":
        from ..guidance.stable_diffusion import StableDiffusionGuidance

        return StableDiffusionGuidance(cfg.prompt, cfg.stable_diffusion, device=device)
    raise ConfigError(
        f"stage {stage.name!r}: guidance {stage.guidance!r} is not a text guidance; "
        "use deepfloyd_if or stable_diffusion"
    )


def initial_gaussians(cfg: RunConfig) -> dict[str, Tensor] | None:
    """None (the trainer's ball), a 3DGS .ply as it is, a point cloud, or a mesh's surface.

    Points are used in the frame they come in: the generated object is expected in the unit ball.
    """
    spec = cfg.init_from
    if not spec or spec == "sphere":
        return None
    path = Path(spec)
    if not path.is_file():
        raise InputError(f"--init {spec}: no such file; give a .ply or a mesh, or sphere")
    if path.suffix.lower() == ".ply":
        from plyfile import PlyData

        names = PlyData.read(str(path))["vertex"].data.dtype.names or ()
        if "opacity" in names and "scale_0" in names:
            return load_ply(path)
    import trimesh

    try:
        geom = trimesh.load(str(path), process=False)
    except Exception as e:  # trimesh raises many types for unreadable files
        raise InputError(f"--init {spec}: not a readable point cloud or mesh ({e})") from e
    if isinstance(geom, trimesh.Scene):
        geom = geom.to_geometry()
    if isinstance(geom, trimesh.PointCloud):
        colors = None
        if len(geom.colors) == len(geom.vertices):
            colors = torch.as_tensor(geom.colors[:, :3] / 255.0, dtype=torch.float32)
        points = torch.as_tensor(geom.vertices, dtype=torch.float32)
        return G.from_points(points, colors, cfg.init)
    if len(getattr(geom, "faces", [])) == 0:
        raise InputError(f"--init {spec}: neither a point cloud nor a mesh with faces")
    return G.init_from_mesh(geom, cfg.init, seed=cfg.seed)


def _offload(cfg: RunConfig, on: bool) -> None:
    if on:
        cfg.deepfloyd_if.cpu_offload = cfg.stable_diffusion.cpu_offload = True


def _peak_memory_mb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024  # bytes on macOS, KiB on Linux


def run_generation(
    cfg: RunConfig,
    out: str | os.PathLike,
    *,
    overwrite: bool = False,
    resume: bool = False,
    callback: Callable[[Progress], bool | None] | None = None,
    device: str | None = None,
    cpu_offload: bool = False,
) -> dict:
    """Make 3D Gaussians (and a mesh) for ``cfg.prompt``; returns the metrics.

    ``device`` (auto | cpu | cuda | cuda:N) overrides ``cfg.device`` and ``cpu_offload`` turns on
    both guidances' offload, also on resume: a run may continue on another device, or with less
    GPU memory, than it started with."""
    out = Path(out)

    def adjust(cfg: RunConfig) -> None:
        cfg.prompt = check_prompt(cfg.prompt)
        _offload(cfg, cpu_offload)

    # The init is read before the output folder is touched: a bad file leaves nothing behind.
    cfg, init = open_run(
        cfg, out, overwrite=overwrite, resume=resume, device=device, adjust=adjust,
        read_inputs=initial_gaussians,
    )  # fmt: skip

    stages: dict[str, dict] = {}

    def track(p: Progress) -> bool | None:
        s = stages.setdefault(
            p.stage, {"steps": p.stage_steps, "first_step": p.step, "start_s": p.elapsed_s}
        )
        s.update(last_step=p.step, end_s=p.elapsed_s, losses=p.losses)
        if on_gpu:  # since this stage's models were loaded (text encoder included)
            s["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
        return callback(p) if callback else None

    device = resolve_device(cfg.device)  # the trainer's: renders reach the guidance there
    on_gpu = device.type == "cuda"

    def guidance_factory(stage: StageConfig, index: int) -> Guidance:
        if on_gpu:
            torch.cuda.reset_peak_memory_stats(device)
        return build_guidance(cfg, stage, device)

    trainer = Trainer(cfg, out, guidance_factory, init=init, callback=track)
    if resume:
        trainer.restore()
    try:
        params = trainer.train()
    except torch.OutOfMemoryError as e:
        raise DeviceError(
            f"the GPU ran out of memory ({device}); the last checkpoint is kept. Free the GPU "
            "(close other programs using it) and `stabledreamer generate --resume "
            f"{out}`, adding --cpu-offload to stream the weights from CPU memory (slower); or "
            "start again with --preset preview or a smaller --sd-resolution. docs/gpu.md lists "
            "the estimated memory per preset"
        ) from e
    save_ply(params, out / "gaussians.ply")
    save_turntable(params, cfg, out)
    metrics: dict = {"prompt": cfg.prompt, "preset": cfg.preset}
    if cfg.mesh.enabled:
        from ..mesh import MeshError, gaussians_to_mesh

        start = time.perf_counter()
        try:
            mesh = gaussians_to_mesh(params, cfg.mesh)
            mesh.save(out / "mesh.glb")
            metrics.update(mesh_faces=int(len(mesh.faces)))
        except MeshError as e:
            metrics["mesh_error"] = str(e)
        metrics["mesh_seconds"] = round(time.perf_counter() - start, 2)
    metrics.update(
        gaussians=G.count(params),
        steps=cfg.total_steps,
        seconds=round(trainer.state.elapsed_s, 2),
        stages={
            name: {
                "steps_this_session": s["last_step"] - s["first_step"] + 1,
                "seconds_per_step": round(
                    (s["end_s"] - s["start_s"]) / max(s["last_step"] - s["first_step"], 1), 4
                ),
                "final_losses": s["losses"],
                **({"peak_gpu_mb": s["peak_gpu_mb"]} if "peak_gpu_mb" in s else {}),
            }
            for name, s in stages.items()
        },
        peak_memory_mb=round(_peak_memory_mb(), 1),
    )
    write_json(out / "metrics.json", metrics)
    return metrics
