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
from ..device import DeviceError, peak_rss_mb, reset_peak_rss, resolve_device
from ..guidance.base import Guidance
from ..memory_tiers import apply_tier
from ..models.store import require_run_models
from ..ply import load_ply, save_ply
from .folder import open_run, save_turntable
from .trainer import Progress, Trainer
from .warm import GuidanceCache

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
    cfg: RunConfig,
    stage: StageConfig,
    device: torch.device | str | None = None,
    keep_text_encoder: bool = False,
) -> Guidance:
    """The stage's text guidance on ``device`` (default: ``cfg.device``), the trainer's.
    ``keep_text_encoder``: a diffusion guidance keeps its text encoder for the next prompt
    (``runs.warm``)."""
    device = resolve_device(cfg.device) if device is None else torch.device(device)
    keep = {"keep_text_encoder": keep_text_encoder}
    if stage.guidance == "deepfloyd_if":
        from ..guidance.deepfloyd_if import DeepFloydIFGuidance

        return DeepFloydIFGuidance(cfg.prompt, cfg.deepfloyd_if, device=device, **keep)
    if stage.guidance == "stable_diffusion":
        from ..guidance.stable_diffusion import StableDiffusionGuidance

        return StableDiffusionGuidance(cfg.prompt, cfg.stable_diffusion, device=device, **keep)
    if stage.guidance == "example_prior":
        from ..guidance.example_prior import ExamplePriorGuidance
        from ..guidance.prior_bank import open_bank

        bank = open_bank(cfg.example_prior.bank)
        return ExamplePriorGuidance(cfg.prompt, bank, cfg.example_prior, stage.resolution)
    raise ConfigError(
        f"stage {stage.name!r}: guidance {stage.guidance!r} is not a text guidance; "
        "use deepfloyd_if, stable_diffusion or example_prior"
    )


def prior_bank_of(cfg: RunConfig):
    """The example prior's bank when a stage uses it (the prompt checked against its labels and
    the catalogue's bank built if needed), else None."""
    if not any(s.guidance == "example_prior" for s in cfg.stages):
        return None
    from ..guidance.prior_bank import open_bank

    bank = open_bank(cfg.example_prior.bank)
    bank.index_of(cfg.prompt)  # an unknown prompt is refused with the bank's list
    for s in cfg.stages:
        if s.guidance == "example_prior" and s.resolution not in bank.resolutions:
            raise ConfigError(
                f"stage {s.name!r} renders at {s.resolution} px but the prior bank has "
                f"{list(bank.resolutions)}: rebuild it with --resolution {s.resolution} or "
                "change the stage's resolution"
            )
    return bank


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


Preflight = Callable[[RunConfig], "int | None"]
"""Checks a run's final config before any model loads (``doctor.preflight``, given by the CLI and
the service) and returns the memory tier to use (None: keep the config's placement)."""


def _prepare(cfg: RunConfig, preflight, memory_tier, cpu_offload: bool) -> None:
    """The models (``models_missing`` at once, naming the set and the command that downloads
    it), the preflight, then the memory tier's placement and ``--cpu-offload`` on top."""
    require_run_models(cfg)
    if preflight is not None:
        memory_tier = preflight(cfg) or memory_tier
    apply_tier(cfg, memory_tier, cpu_offload)


def model_set_record(cfg: RunConfig) -> dict:
    """The run's model set for its metrics: the set, its licence line, and the model each stage
    actually loaded (a source given instead of the set's id is recorded as given)."""
    from ..models.sets import get_set

    record = get_set(cfg.models).record()
    record["stages"] = {
        st.name: {"guidance": st.guidance, "model": getattr(cfg, st.guidance).model}
        for st in cfg.stages
        if st.guidance in ("deepfloyd_if", "stable_diffusion")
    }
    return record


def run_peak_memory_mb(device: torch.device, stage_peaks_mb: list[float]) -> float:
    """The run's peak memory in MiB: on CUDA the largest allocation on the run's GPU over all
    stages (the counter is reset when each stage's models load, so the stages' own peaks count
    too); on the CPU the process's resident high-water mark."""
    device = torch.device(device)
    if device.type == "cuda":
        now = torch.cuda.max_memory_allocated(device) / 2**20
        return max([now, *stage_peaks_mb])
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
    memory_tier: int | None = None,
    preflight: Preflight | None = None,
    guidances: GuidanceCache | None = None,
) -> dict:
    """Make 3D Gaussians (and a mesh) for ``cfg.prompt``; returns the metrics.

    ``device`` (auto | cpu | cuda | cuda:N) overrides ``cfg.device`` and ``cpu_offload`` turns on
    both guidances' offload, also on resume: a run may continue on another device, or with less
    GPU memory, than it started with. ``memory_tier`` (8 | 12 | 16 | 24, ``memory_tiers``) sets
    where the models live, also on resume; ``preflight`` is called with the final config after
    the inputs are checked and before anything is written or loaded, and may pick the tier.
    ``guidances``: a long-lived process's cache of loaded models (``runs.warm``), used and
    filled instead of loading every stage's guidance afresh."""
    out = Path(out)

    def adjust(cfg: RunConfig) -> None:
        cfg.prompt = check_prompt(cfg.prompt)
        if resume:  # a fresh run is prepared once its inputs are read (below)
            _prepare(cfg, preflight, memory_tier, cpu_offload)

    banks = {}

    def read_inputs(cfg: RunConfig):
        init = initial_gaussians(cfg)
        banks["prior"] = prior_bank_of(cfg)  # an unknown prompt is refused before any write
        _prepare(cfg, preflight, memory_tier, cpu_offload)  # before the config is saved
        return init

    # The init is read (and the preflight run) before the output folder is touched: a bad file
    # or a machine that cannot run this leaves nothing behind.
    cfg, init = open_run(
        cfg, out, overwrite=overwrite, resume=resume, device=device, adjust=adjust,
        read_inputs=read_inputs,
    )  # fmt: skip
    prior_bank = banks["prior"] if not resume else prior_bank_of(cfg)

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
        if guidances is None:
            return build_guidance(cfg, stage, device)
        return guidances.get(
            cfg, stage, device, lambda: build_guidance(cfg, stage, device, keep_text_encoder=True)
        )

    reset_peak_rss()
    trainer = Trainer(cfg, out, guidance_factory, init=init, callback=track)
    if resume:
        trainer.restore()
    try:
        params = trainer.train()
    except torch.OutOfMemoryError as e:
        raise DeviceError(
            f"the GPU ran out of memory ({device}); the last checkpoint is kept. Free the GPU "
            "(close other programs using it) and `stabledreamer generate --resume "
            f"{out}` with a smaller memory tier (--memory 12 or 8: models streamed from CPU "
            "memory, slower) or --cpu-offload (every model streamed). docs/gpu.md lists the "
            "estimated memory per tier"
        ) from e
    save_ply(params, out / "gaussians.ply")
    save_turntable(params, cfg, out)
    metrics: dict = {
        "prompt": cfg.prompt,
        "preset": cfg.preset,
        "device": str(device),
        "render_backend": trainer.render_backend,
    }
    from .followup import followup_info

    metrics.update(followup_info(out))  # a refine or continue: its mode and parent
    if cfg.models:  # which set made this, so the licence that applies can be told later
        metrics["model_set"] = model_set_record(cfg)
    mesh = None
    if cfg.mesh.enabled:
        from ..mesh import MeshError, gaussians_to_mesh

        start = time.perf_counter()
        try:
            mesh = gaussians_to_mesh(params, cfg.mesh)
            mesh.save(out / "mesh.glb")
            metrics.update(mesh_faces=int(len(mesh.faces)))
        except MeshError as e:
            mesh, metrics["mesh_error"] = None, str(e)
        metrics["mesh_seconds"] = round(time.perf_counter() - start, 2)
    if prior_bank is not None:  # the bank holds the prompt's true mesh: score against it
        from .prior_metrics import ground_truth_metrics

        metrics.update(ground_truth_metrics(params, mesh, cfg, prior_bank, out))
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
        peak_memory_mb=round(
            run_peak_memory_mb(
                device, [s["peak_gpu_mb"] for s in stages.values() if "peak_gpu_mb" in s]
            ),
            1,
        ),
    )
    write_json(out / "metrics.json", metrics)
    return metrics
