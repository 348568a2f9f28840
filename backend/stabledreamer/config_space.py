"""The space of valid settings: the choices of every choice setting (``Literal`` types) and the
range of every numeric one, in one light module (no torch: the CLI builds its options from it),
checked by ``config.from_dict``.

Keys are ``Class.field`` of the config dataclasses; a tuple's elements share the field's range.
The bounds are what a job can afford and what makes sense, not tuning advice: a value outside is
refused before a job is queued (the service) or a run starts (the CLI), with the key and the
range in the error. ``tests/test_config.py`` checks that every numeric setting reachable from
``RunConfig`` has an entry here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

GuidanceName = Literal["oracle", "deepfloyd_if", "stable_diffusion", "example_prior"]
Background = Literal["random", "white", "black"]
"""random: a random colour per view (the alpha must be right)."""
Schedule = Literal["constant", "step", "linear", "sqrt"]
"""How a stage's t_max goes from its start to its end value (``optim.sds.t_max_at``)."""
Weighting = Literal["sds", "uniform", "snr"]
OracleMode = Literal["perfect", "imperfect"]
PriorUncond = Literal["bucket", "all"]
"""The example prior's unconditional set: the camera's view bucket of every object, or all."""
RenderBackend = Literal["auto", "gsplat", "native", "torch"]
"""The rasteriser of a run (``render.backend``, whose BACKENDS must match)."""


@dataclass(frozen=True)
class Range:
    lo: float
    hi: float

    def __contains__(self, value: float) -> bool:
        return self.lo <= value <= self.hi

    def __str__(self) -> str:
        return f"[{_fmt(self.lo)}, {_fmt(self.hi)}]"


def _fmt(v: float) -> str:
    return f"{v:,}" if isinstance(v, int) else f"{v:g}"


MAX_STEPS = 1_000_000
MAX_GAUSSIANS = 1_000_000
"""Gaussians one job may hold: about 60 floats each plus Adam state, and the preview's cap."""

RANGES: dict[str, Range] = {
    # --- the run ---
    "RunConfig.seed": Range(0, 2**63 - 1),
    "RunConfig.checkpoint_every": Range(1, MAX_STEPS),
    "RunConfig.debug_every": Range(0, MAX_STEPS),
    "RunConfig.eval_resolution": Range(8, 1024),
    "RunConfig.threads": Range(0, 256),  # also at most the machine's CPUs (RunConfig.validate)
    "StageConfig.steps": Range(1, MAX_STEPS),
    "StageConfig.resolution": Range(8, 1024),
    "LearningRates.means": Range(0.0, 10.0),
    "LearningRates.means_final": Range(0.0, 10.0),
    "LearningRates.scales": Range(0.0, 10.0),
    "LearningRates.quats": Range(0.0, 10.0),
    "LearningRates.opacities": Range(0.0, 10.0),
    "LearningRates.sh0": Range(0.0, 10.0),
    "LearningRates.shN": Range(0.0, 10.0),
    # --- Gaussians and cameras ---
    "InitConfig.num_points": Range(1, 200_000),
    "InitConfig.radius": Range(1e-3, 10.0),
    "InitConfig.scale": Range(1e-5, 1.0),
    "InitConfig.opacity": Range(1e-4, 0.9999),
    "InitConfig.color": Range(0.0, 1.0),
    "InitConfig.sh_degree": Range(0, 3),
    "CameraConfig.distance": Range(0.5, 100.0),
    "CameraConfig.elevation_deg": Range(-90.0, 90.0),
    "CameraConfig.azimuth_deg": Range(-360.0, 720.0),
    "CameraConfig.fov_y_deg": Range(5.0, 150.0),
    "CameraConfig.batch_size": Range(1, 64),
    # --- guidance ---
    "DeepFloydIFConfig.guidance_scale": Range(0.0, 1000.0),
    "DeepFloydIFConfig.resolution": Range(8, 256),
    "DeepFloydIFConfig.max_text_length": Range(1, 512),
    "StableDiffusionConfig.guidance_scale": Range(0.0, 1000.0),
    "StableDiffusionConfig.resolution": Range(64, 1024),
    "ViewPromptConfig.overhead_threshold_deg": Range(0.0, 90.0),
    "ViewPromptConfig.front_threshold_deg": Range(0.0, 180.0),
    "ViewPromptConfig.back_threshold_deg": Range(0.0, 180.0),
    "OracleConfig.num_train_timesteps": Range(2, 10_000),
    "OracleConfig.bank_views": Range(1, 4096),
    "OracleConfig.supersample": Range(1, 8),
    "OracleConfig.blur_sigma_max": Range(0.0, 1.0),
    "OracleConfig.perturb_max": Range(0.0, 1.0),
    "ExamplePriorConfig.guidance_scale": Range(0.0, 1000.0),
    "ExamplePriorConfig.num_train_timesteps": Range(2, 10_000),
    # --- what shapes the Gaussians ---
    "NoiseConfig.t_min": Range(0.0, 1.0),
    "NoiseConfig.t_max_start": Range(0.0, 1.0),
    "NoiseConfig.t_max_end": Range(0.0, 1.0),
    "NoiseConfig.milestones": Range(0.0, 1.0),
    "NoiseConfig.grad_clip": Range(0.0, 1e9),
    "RegularizerConfig.max_scale": Range(1e-6, 10.0),
    "RegularizerConfig.scale_weight": Range(0.0, 1e6),
    "RegularizerConfig.max_anisotropy": Range(1.0, 1e4),
    "RegularizerConfig.anisotropy_weight": Range(0.0, 1e6),
    "RegularizerConfig.opacity_weight": Range(0.0, 1e6),
    "RegularizerConfig.position_radius": Range(1e-3, 100.0),
    "RegularizerConfig.position_weight": Range(0.0, 1e6),
    "StrategyConfig.max_gaussians": Range(1, MAX_GAUSSIANS),
    "StrategyConfig.grow_grad2d": Range(0.0, 1e6),
    "StrategyConfig.grow_scale3d": Range(0.0, 100.0),
    "StrategyConfig.prune_opacity": Range(0.0, 1.0),
    "StrategyConfig.prune_scale3d": Range(0.0, 100.0),
    "StrategyConfig.start_step": Range(0, MAX_STEPS),
    "StrategyConfig.stop_fraction": Range(0.0, 1.0),
    "StrategyConfig.every": Range(1, MAX_STEPS),
    "StrategyConfig.opacity_reset_every": Range(0, MAX_STEPS),
    "StrategyConfig.prune_scale3d_after": Range(0, MAX_STEPS),
    # --- the mesh ---
    "MeshConfig.faces": Range(4, 2_000_000),
    "MeshConfig.texture_size": Range(16, 8192),
    "MeshConfig.grid": Range(8, 512),
    "MeshConfig.min_opacity": Range(0.0, 1.0),
    "MeshConfig.level_fraction": Range(0.01, 100.0),
    "MeshConfig.filter_voxels": Range(0.0, 100.0),
    "MeshConfig.min_component_ratio": Range(0.0, 1.0),
    "MeshConfig.views": Range(1, 256),
    "MeshConfig.view_resolution": Range(16, 4096),
    "MeshConfig.uv_padding": Range(0, 64),
    "MeshConfig.threads": Range(0, 256),
    "MeshConfig.chamfer_samples": Range(100, 10_000_000),
    "MeshConfig.chamfer_views": Range(1, 1024),
    "MeshConfig.chamfer_resolution": Range(16, 4096),
}
MAX_TEXT = 4096
"""Longest string setting (model ids, negative prompts, suffixes); prompts have their own limit."""
MAX_ITEMS = 64
"""Longest list or variable-length tuple setting (stages, milestones)."""
