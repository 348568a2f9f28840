"""The run configuration: one dataclass per part, composed; saved with every run and checkpoint.

``to_dict``/``from_dict`` turn any of these dataclasses into plain JSON-able dicts and back.
``from_dict`` is where every setting is checked, once: unknown keys, types, ``Literal`` choices
and the ranges of ``config_space`` (a value outside is a ``ConfigError`` naming the key and its
range). ``apply_overrides`` sets dotted keys (``"stages.0.steps"``, or a stage by name:
``"geometry.steps"``) in such a dict. Named presets, and ``presets.resolve`` (preset + overrides
-> ``RunConfig``, the one path the CLI and the service share), live in ``presets.py``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from .cameras import CameraConfig
from .config_space import MAX_ITEMS, MAX_TEXT, RANGES, Background, GuidanceName, RenderBackend
from .device import check_device_name
from .errors import ConfigError
from .gaussians import InitConfig
from .guidance.deepfloyd_if import DeepFloydIFConfig
from .guidance.example_prior import ExamplePriorConfig
from .guidance.oracle import OracleConfig
from .guidance.stable_diffusion import StableDiffusionConfig
from .mesh.config import MeshConfig
from .optim.regularizers import RegularizerConfig
from .optim.sds import NoiseConfig
from .optim.strategy import StrategyConfig
from .render.backend import check_backend_name


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
    guidance: GuidanceName = "oracle"
    """Which guidance: oracle | deepfloyd_if | stable_diffusion | example_prior."""
    steps: int = 1000
    resolution: int = 128
    """Render size (square). DeepFloyd IF stage I sees 64, Stable Diffusion 512."""
    background: Background = "random"
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
    models: str = ""
    """generate: the model set (``models.sets``: if-sd | if-sd-small | sd-only), which chooses
    the models of each stage and their licence; set through ``presets.resolve(models=...)``
    (``generate --models``), which also gives the stages their guidance. Empty: no set
    (reconstruction, the example prior)."""
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
    render_backend: RenderBackend = "auto"
    """The rasteriser: auto | gsplat | native | torch (``render.backend``); resolved once when
    the run starts (``STABLEDREAMER_RASTER`` overrides it). auto: gsplat on CUDA when its kernels
    are built, else the pure-torch one with a notice; on the CPU the native kernel."""

    def validate(self) -> None:
        """Checks across settings (each setting's own type and range: ``from_dict``)."""
        if not self.stages:
            raise ConfigError("a run needs at least one stage")
        cpus = os.cpu_count() or 1
        if self.threads > cpus:
            raise ConfigError(f"threads: {self.threads} is more than this machine's {cpus} CPUs")
        check_device_name(self.device)
        check_backend_name(self.render_backend)
        if self.models:
            from .models.sets import get_set

            get_set(self.models)  # an unknown set is refused with the list

    @property
    def total_steps(self) -> int:
        return sum(s.steps for s in self.stages)


def to_dict(obj: Any) -> Any:
    return dataclasses.asdict(obj)


def from_dict(cls: type, data: Any, _key: str = "") -> Any:
    """Build dataclass ``cls`` from a plain dict (as written by ``to_dict``), checking every
    setting: unknown keys, types, choices and ranges. Errors are ``ConfigError``s naming the
    dotted key."""
    if not isinstance(data, dict):
        raise ConfigError(f"{_key or cls.__name__}: must be a group of settings, "
                          f"not {type(data).__name__}")  # fmt: skip
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(str(k)[:80] for k in set(data) - names)
    if unknown:
        raise ConfigError(f"{_key + '.' if _key else ''}{unknown[0]}: unknown setting"
                          f"{' (of ' + cls.__name__ + ')' if not _key else ''}")  # fmt: skip
    values = {
        k: _convert(hints[k], v, f"{_key}.{k}" if _key else k, f"{cls.__name__}.{k}")
        for k, v in data.items()
    }
    try:
        return cls(**values)
    except (ValueError, TypeError) as e:  # a dataclass's own cross-field checks
        raise ConfigError(f"{_key or cls.__name__}: {e}") from None


def _convert(tp: Any, value: Any, key: str, field_id: str) -> Any:
    def fail(what: str):
        raise ConfigError(f"{key}: {what}")

    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, key)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return None if value is None else _convert(args[0], value, key, field_id)
    if origin is Literal:
        choices = typing.get_args(tp)
        if not isinstance(value, str) or value not in choices:
            fail(f"must be one of {', '.join(choices)}; got {str(value)[:40]!r}")
        return value
    if origin in (list, tuple):
        args = typing.get_args(tp)
        if not isinstance(value, list | tuple):
            fail(f"must be a list, not {type(value).__name__}")
        if origin is tuple and Ellipsis not in args and len(value) != len(args):
            fail(f"must be a list of {len(args)} values, got {len(value)}")
        if len(value) > MAX_ITEMS:
            fail(f"at most {MAX_ITEMS} values, got {len(value)}")
        item = args[0]
        items = [_convert(item, v, f"{key}.{i}", field_id) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if tp is bool:
        if not isinstance(value, bool):
            fail(f"must be true or false, not {type(value).__name__}")
        return value
    if tp is int or tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            fail(f"must be a number, not {type(value).__name__}")
        if tp is int and not isinstance(value, int):
            fail(f"must be an integer, got {value!r}")
        if not math.isfinite(value):
            fail(f"must be finite, got {value!r}")
        bounds = RANGES.get(field_id)
        if bounds is None:
            raise KeyError(f"{field_id} has no range in config_space.RANGES")
        if value not in bounds:
            fail(f"{value!r} is outside the range {bounds}")
        return tp(value)
    if tp is str:
        if not isinstance(value, str):
            fail(f"must be a string, not {type(value).__name__}")
        if len(value) > MAX_TEXT:
            fail(f"at most {MAX_TEXT} characters, got {len(value)}")
        return value
    raise TypeError(f"{field_id}: settings of type {tp} are not supported")


def apply_overrides(
    data: dict[str, Any], overrides: dict[str, Any], forbidden: dict[str, str] | None = None
) -> None:
    """Set each dotted key of ``overrides`` in ``data`` (a ``to_dict`` of a ``RunConfig``).

    A stage may be named by its name (``"detail.steps"``) or index (``"stages.1.steps"``); only
    existing leaf settings can be set (whole groups are refused); ``forbidden`` maps top-level
    keys a caller may not set to the reason. Types and ranges are checked by ``from_dict``."""
    forbidden = forbidden or {}
    for key, value in overrides.items():
        _override(data, key, value, forbidden)


def _override(data: dict, key: Any, value: Any, forbidden: dict[str, str]) -> None:
    def fail(what: str):
        raise ConfigError(f"override {str(key)[:80]!r}: {what}")

    if not isinstance(key, str):
        fail("keys are strings")
    parts = key.split(".")
    if not key or any(not p for p in parts):
        fail("not a dotted config key")
    for n in range(1, len(parts) + 1):
        if ".".join(parts[:n]) in forbidden:
            fail(forbidden[".".join(parts[:n])])
    if parts[0] not in data:
        names = [s["name"] for s in data["stages"]]
        if parts[0] not in names:
            fail(f"unknown setting {parts[0]!r}")
        parts = ["stages", str(names.index(parts[0])), *parts[1:]]
    node: Any = data
    for i, p in enumerate(parts):
        if isinstance(node, list):
            if not p.isdigit() or int(p) >= len(node):
                fail(f"{p!r} is not an index below {len(node)}")
            k: Any = int(p)
        elif isinstance(node, dict):
            if p not in node:
                fail(f"unknown setting {p!r}")
            k = p
        else:
            fail(f"{parts[i - 1]!r} has no settings")
        if i == len(parts) - 1:
            if isinstance(node[k], dict):
                fail("is a group of settings; override its fields one by one")
            node[k] = value
        else:
            node = node[k]
