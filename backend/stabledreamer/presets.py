"""Named configurations, and the one path from a request to a ``RunConfig``.

A preset is a function returning a fresh ``RunConfig``. ``resolve`` turns a preset name, dotted
overrides and what only the caller decides (seed, prompt, target, models, ...) into a checked
``RunConfig``: the CLI and the service both build every run through it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .config import RunConfig, StageConfig, apply_overrides, from_dict, to_dict
from .errors import ConfigError
from .gaussians import InitConfig
from .mesh.config import MeshConfig
from .optim.sds import NoiseConfig
from .optim.strategy import StrategyConfig


def reconstruct() -> RunConfig:
    """Oracle reconstruction of a target mesh (``demo`` and ``reconstruct``): one pixel-space
    stage at 128 x 128, sized to finish within 5 minutes on a 2-core CPU."""
    stage = StageConfig(
        name="reconstruct",
        guidance="oracle",
        steps=1500,
        resolution=128,
        background="random",
        noise=NoiseConfig(t_min=0.02, t_max_start=0.98, t_max_end=0.3, schedule="linear"),
        # The SDS loss sums over pixels (as threestudio's), so screen-space gradients are far
        # larger than 3DGS's mean-L1 ones: 0.3 is about the 85th percentile of the per-Gaussian
        # mean gradient at the first refinements of the demo (measured), growing ~10-20 % per
        # refinement instead of splitting everything.
        strategy=StrategyConfig(max_gaussians=40_000, grow_grad2d=0.3),
    )
    return RunConfig(preset="reconstruct", init=InitConfig(num_points=4000), stages=[stage])


def smoke() -> RunConfig:
    """A few steps at tiny resolution: for tests and quick checks of the whole pipeline."""
    cfg = reconstruct()
    cfg.preset = "smoke"
    cfg.init = InitConfig(num_points=500)
    cfg.oracle.bank_views = 8
    cfg.oracle.supersample = 2
    cfg.eval_resolution = 32
    cfg.checkpoint_every = 2
    cfg.debug_every = 2
    cfg.camera.batch_size = 2
    st = cfg.stages[0]
    st.steps, st.resolution = 4, 32
    st.strategy.start_step, st.strategy.every = 1, 2
    cfg.mesh = MeshConfig(faces=2000, texture_size=128, grid=40, views=8, view_resolution=48)
    cfg.mesh.chamfer_samples, cfg.mesh.chamfer_views, cfg.mesh.chamfer_resolution = 2000, 12, 96
    return cfg


def _text_to_3d(name: str, steps_geometry: int, steps_detail: int, sd_resolution: int) -> RunConfig:
    """StableDreamer's two stages: DeepFloyd IF (pixels, 64 x 64) shapes the geometry with large
    noise annealed down, then Stable Diffusion (latents, renders through the VAE) refines colour
    and detail at lower noise, with densification mostly in stage 1 (paper Sec. 3.2-3.3)."""
    geometry = StageConfig(
        name="geometry",
        guidance="deepfloyd_if",
        steps=steps_geometry,
        resolution=64,
        # t_max annealed from 0.98 (global shape) to 0.5; threestudio's IF configs sample
        # [0.02, 0.98], Magic3D's refine stage and ProlificDreamer anneal to 0.5.
        noise=NoiseConfig(t_min=0.02, t_max_start=0.98, t_max_end=0.5, schedule="sqrt"),
        # Not yet calibrated on real SDS gradients (needs a GPU): the oracle's measured value.
        strategy=StrategyConfig(max_gaussians=100_000, grow_grad2d=0.3, stop_fraction=0.8),
    )
    detail = StageConfig(
        name="detail",
        guidance="stable_diffusion",
        steps=steps_detail,
        resolution=sd_resolution,
        noise=NoiseConfig(t_min=0.02, t_max_start=0.5, t_max_end=0.2, schedule="sqrt"),
        strategy=StrategyConfig(enabled=False),  # geometry is settled: colour and detail only
    )
    cfg = RunConfig(preset=name, init=InitConfig(num_points=5000), stages=[geometry, detail])
    cfg.stable_diffusion.resolution = sd_resolution
    cfg.regularizer.opacity_weight = 0.01  # sparsity for text-to-3D (off for reconstruction)
    cfg.checkpoint_every = 200
    return cfg


def preview() -> RunConfig:
    """A quick look: few steps, SD at 256 x 256, a lighter mesh (20k faces, 512² texture,
    16 bake views: UV unwrapping time grows with the face count)."""
    cfg = _text_to_3d("preview", 600, 400, 256)
    cfg.mesh.faces, cfg.mesh.texture_size, cfg.mesh.views = 20_000, 512, 16
    return cfg


def standard() -> RunConfig:
    """The default: threestudio's Gaussian-splatting SDS runs use a few thousand steps."""
    return _text_to_3d("standard", 2000, 1500, 512)


def final() -> RunConfig:
    """Longer runs for the best result."""
    return _text_to_3d("final", 4000, 3000, 512)


PRESETS: dict[str, Callable[[], RunConfig]] = {
    "reconstruct": reconstruct,
    "smoke": smoke,
    "preview": preview,
    "standard": standard,
    "final": final,
}
TEXT_PRESETS = ("preview", "standard", "final")


def get_preset(name: str) -> RunConfig:
    try:
        return PRESETS[name]()
    except KeyError:
        raise ConfigError(
            f"unknown preset {name!r}; choose one of {', '.join(sorted(PRESETS))}",
            code="unknown_preset",
        ) from None


def resolve(
    preset: str,
    overrides: dict[str, Any] | None = None,
    *,
    fixed: dict[str, Any] | None = None,
    forbidden: dict[str, str] | None = None,
) -> RunConfig:
    """The checked ``RunConfig`` of a run: the preset, then the dotted ``overrides`` (see
    ``config.apply_overrides``; ``forbidden`` top-level keys refused with a reason), then the
    ``fixed`` settings only the caller decides, as dotted keys too (``seed``, ``prompt``,
    ``target``, ``init_from``, ``deepfloyd_if.model``, ...). Every value is checked by
    ``config.from_dict`` (types, choices, ranges) and the whole by ``RunConfig.validate``; any
    problem is a ``ConfigError`` naming the key."""
    data = to_dict(get_preset(preset))
    apply_overrides(data, overrides or {}, forbidden)
    apply_overrides(data, fixed or {})
    cfg = from_dict(RunConfig, data)
    cfg.validate()
    return cfg
