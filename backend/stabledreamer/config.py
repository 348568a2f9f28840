"""The run configuration: one dataclass per part, composed; saved with every run and checkpoint.

``to_dict``/``from_dict`` turn any of these dataclasses into plain JSON-able dicts and back (unknown
keys are an error, so a typo in an override is caught). Named presets live in ``presets.py``.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from .cameras import CameraConfig
from .device import check_device_name
from .gaussians import InitConfig
from .guidance.deepfloyd_if import DeepFloydIFConfig
from .guidance.example_prior import ExamplePriorConfig
from .guidance.oracle import OracleConfig
from .guidance.stable_diffusion import StableDiffusionConfig
from .mesh.config import MeshConfig
from .optim.regularizers import RegularizerConfig
from .optim.sds import NoiseConfig
from .optim.strategy import StrategyConfig


@dataclass
class LearningRates:
    """Adam learning rates per parameter group."""

    means: float = 1.6e-3
    """Position lr at the start of a stage, decayed exponentially to ``means_final`` (3DGS decays
    1.6e-4 -> 1.6e-6 x scene extent over 30k steps; short SDS runs use ~10x: threestudio's
    gaussian-splatting position_lr 1e-3 -> 2e-5)."""
    means_final: float = 1.6e-5
    scales: float = 5e-3
    """3DGS and threestudio: 0.005."""
    quats: float = 1e-3
    """3DGS and threestudio: 0.001."""
    opacities: float = 5e-2
    """3DGS and threestudio: 0.05."""
    sh0: float = 1e-2
    """threestudio's gaussian-splatting feature_lr 0.01 (3DGS: 0.0025)."""
    shN: float = 5e-4
    """3DGS: sh0 / 20."""


@dataclass
class StageConfig:
    """One stage of training: a guidance, a resolution, a noise schedule, a step budget."""

    name: str = "stage"
    guidance: str = "oracle"
    """Which guidance: oracle | deepfloyd_if | stable_diffusion | example_prior."""
    steps: int = 1000
    resolution: int = 128
    """Render size (square). DeepFloyd IF stage I sees 64, Stable Diffusion 512."""
    background: str = "random"
    """random (a random colour per view: the alpha must be right) | white | black."""
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    lr: LearningRates = field(default_factory=LearningRates)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)


@dataclass
class RunConfig:
    preset: str = "custom"
    seed: int = 0
    target: str = ""
    """reconstruct: the target mesh (path or ``procedural:demo``)."""
    prompt: str = ""
    """generate: what to make."""
    init_from: str = ""
    """generate: start from a point cloud / 3DGS .ply or a mesh's surface; empty = a ball."""
    deepfloyd_if: DeepFloydIFConfig = field(default_factory=DeepFloydIFConfig)
    stable_diffusion: StableDiffusionConfig = field(default_factory=StableDiffusionConfig)
    init: InitConfig = field(default_factory=InitConfig)
    camera: CameraConfig = field(default_factory=CameraConfig)
    regularizer: RegularizerConfig = field(default_factory=RegularizerConfig)
    oracle: OracleConfig = field(default_factory=OracleConfig)
    example_prior: ExamplePriorConfig = field(default_factory=ExamplePriorConfig)
    """generate on the example-based prior (a bank of known objects; ``--prior``)."""
    stages: list[StageConfig] = field(default_factory=lambda: [StageConfig()])
    checkpoint_every: int = 100
    """Steps between checkpoints (and always at the end of a stage)."""
    debug_every: int = 100
    """Steps between debug strips (render | noisy | x0_hat); 0 = never."""
    eval_resolution: int = 128
    """Held-out evaluation image size."""
    threads: int = 0
    """CPU threads for torch; 0 = torch's default."""
    device: str = "auto"
    """Where the Gaussians, optimizer, renders and guidance live: auto (CUDA when present, else
    the CPU) | cpu | cuda | cuda:N. Checkpoints load on any device."""
    mesh: MeshConfig = field(default_factory=MeshConfig)
    """The textured mesh written at the end of a run (``mesh.glb``)."""

    def validate(self) -> None:
        if not self.stages:
            raise ValueError("a run needs at least one stage")
        for s in self.stages:
            if s.steps <= 0:
                raise ValueError(f"stage {s.name!r}: steps must be positive, got {s.steps}")
            if s.resolution < 8:
                raise ValueError(f"stage {s.name!r}: resolution must be at least 8")
            if s.background not in ("random", "white", "black"):
                raise ValueError(f"stage {s.name!r}: background must be random, white or black")
        if self.checkpoint_every <= 0:
            raise ValueError("checkpoint_every must be positive")
        check_device_name(self.device)

    @property
    def total_steps(self) -> int:
        return sum(s.steps for s in self.stages)


def to_dict(obj: Any) -> Any:
    return dataclasses.asdict(obj)


def from_dict(cls: type, data: dict[str, Any]) -> Any:
    """Build dataclass ``cls`` from a plain dict (as written by ``to_dict``)."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown settings {sorted(unknown)}")
    return cls(**{k: _convert(hints[k], v) for k, v in data.items()})


def _convert(tp: Any, value: Any) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp) and isinstance(value, dict):
        return from_dict(tp, value)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return None if value is None else _convert(args[0], value)
    if origin is list:
        (item,) = typing.get_args(tp)
        return [_convert(item, v) for v in value]
    if origin is tuple:
        return tuple(value)
    return value
