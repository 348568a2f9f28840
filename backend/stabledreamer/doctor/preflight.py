"""Preflight: before any model loads, everything a run needs, so it fails in seconds with the fix.

Called by ``stabledreamer generate`` and by the service's worker before a job, with the run's
final configuration. It checks, in order: the device; the renderer (gsplat's kernels ready,
built now with visible progress when a CUDA compiler is there, else the pure-torch rasteriser
with a notice); the GPU memory for the run under its memory tier (``--memory``: ``auto`` picks
one from the free memory); the models (a local folder, the Hugging Face cache, or the hub); free
disk for the run and for missing weights. Every failure is collected and raised together as one
``PreflightError`` whose message lists each problem with its fix.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import StableDreamerError
from .checks import FAIL, GIB, OK, WARN, Check, DoctorConfig, check_disk, check_model

TEXT_GUIDANCES = {"deepfloyd_if": "if", "stable_diffusion": "sd"}


class PreflightError(StableDreamerError):
    """The run cannot start here; the message lists each problem and its fix."""

    code = "job_failed"


@dataclass
class Preflight:
    device: str
    render_backend: str
    memory_tier: int | None  # None: a CPU run (tiers are for GPUs)
    estimate_gib: float | None
    free_gib: float | None
    seconds: float
    notes: list[str] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)


def _gpu_free_gib(device) -> tuple[float, float]:
    import torch

    free, total = torch.cuda.mem_get_info(device)
    return free / GIB, total / GIB


def preflight(
    cfg,
    out: str | Path,
    *,
    memory: str = "auto",
    build_kernels: bool = True,
    progress: Callable[[str], None] = lambda msg: None,
    cpu_offload: bool = False,
    gpu_free_gib: Callable[[object], tuple[float, float]] | None = None,
    check_models: bool = True,
) -> Preflight:
    """Check ``cfg`` (a ``RunConfig``: device, models, stages as the run will use them; not
    changed) before anything loads; ``Preflight.memory_tier`` is the tier the run should use
    (``memory_tiers.apply_tier``). Raises ``PreflightError`` listing every problem and its fix.
    ``gpu_free_gib(device) -> (free, total)`` can be injected (tests)."""
    from ..device import DeviceError, resolve_device
    from ..memory_tiers import check_memory_choice
    from ..render import gsplat_kernels
    from ..render.backend import RenderBackendError, backend_from_env, resolve_backend

    start = time.perf_counter()
    problems: list[Check] = []
    notes: list[str] = []
    checks: list[Check] = []
    memory = check_memory_choice(memory)
    try:
        device = resolve_device(cfg.device)
    except DeviceError as e:
        raise PreflightError(f"preflight: {e}") from e

    # The renderer: decided now, built now if it has to be (not inside step 1).
    requested = backend_from_env(cfg.render_backend)
    if device.type == "cuda" and requested in ("auto", "gsplat") and build_kernels:
        st = gsplat_kernels.status()
        if st.ready or st.can_build:  # load them now (or build them, visibly), not in step 1
            try:
                gsplat_kernels.build(progress)
            except (RuntimeError, StableDreamerError) as e:  # a failed build, or another
                notes.append(str(e))  # process's build past the guard's wait: torch renders
    try:
        backend = resolve_backend(requested, device, notify=notes.append)
        checks.append(Check("renderer", OK, backend))
    except RenderBackendError as e:
        backend = "?"
        problems.append(Check("renderer", FAIL, str(e).split(": ")[0], str(e)))

    # Memory: a tier for this GPU (or the asked-for one), checked against its free memory.
    tier = estimate = free = None
    if device.type == "cuda":
        from .gpu_memory import choose_tier, tier_estimate

        free, total = (gpu_free_gib or _gpu_free_gib)(device)
        if memory == "auto":
            tier = choose_tier(cfg, free, total, cpu_offload)
            if tier is None:
                need = tier_estimate(cfg, 8, cpu_offload)
                problems.append(Check(
                    "gpu memory", FAIL,
                    f"{free:.1f} of {total:.1f} GiB free; even the 8 GB tier needs about "
                    f"{need:.1f} GiB (estimated)",
                    "close other programs using the GPU (nvidia-smi lists them), or use a GPU "
                    "with at least 8 GB",
                ))  # fmt: skip
        else:
            tier = int(memory)
            need = tier_estimate(cfg, tier, cpu_offload)
            if need > free:
                problems.append(Check(
                    "gpu memory", FAIL,
                    f"--memory {tier}: about {need:.1f} GiB needed (estimated), {free:.1f} of "
                    f"{total:.1f} GiB free",
                    "pass --memory auto (or a smaller tier), or free the GPU (nvidia-smi)",
                ))  # fmt: skip
        if tier is not None:
            estimate = tier_estimate(cfg, tier, cpu_offload)
            checks.append(Check("gpu memory", OK, f"{tier} GB tier, ~{estimate:.1f} GiB"))

    # Models and disk: only those the stages use.
    download = 0.0
    if check_models:
        dcfg = DoctorConfig(if_model=cfg.deepfloyd_if.model, sd_model=cfg.stable_diffusion.model,
                            device=cfg.device, out=str(out))  # fmt: skip
        kinds = {TEXT_GUIDANCES[s.guidance] for s in cfg.stages if s.guidance in TEXT_GUIDANCES}
        for kind in sorted(kinds):
            source = dcfg.if_model if kind == "if" else dcfg.sd_model
            check, gib = check_model(kind, source, dcfg)
            download += gib
            (problems if check.status == FAIL else checks).append(check)
        for check in check_disk(str(out), None, download):
            (problems if check.status == FAIL else checks).append(check)
    notes += [f"{c.name}: {c.detail}" for c in checks if c.status == WARN]
    if problems:
        lines = [f"- {c.name}: {c.detail}" + (f"\n  fix: {c.fix}" if c.fix else "")
                 for c in problems]  # fmt: skip
        raise PreflightError("the run cannot start here:\n" + "\n".join(lines))
    return Preflight(
        device=str(device),
        render_backend=backend,
        memory_tier=tier,
        estimate_gib=estimate,
        free_gib=free,
        seconds=time.perf_counter() - start,
        notes=notes,
        checks=checks,
    )
