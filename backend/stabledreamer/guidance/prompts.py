"""View-dependent prompts: a suffix per camera (front / side / back / overhead view).

DreamFusion (Sec. 3.2) appends the view to the prompt so the diffusion model draws the side the
camera sees; this reduces multi-face (Janus) geometry. The thresholds are threestudio's
``PromptProcessor`` defaults (overhead_threshold 60, front_threshold 45, back_threshold 45) and the
suffixes its ``view_dependent_prompting`` texts. Azimuth (docs/architecture.md): 0 = the camera on
-Y looking at the front, 90 = the +X side, 180 = the back.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

VIEWS = ("front", "side", "back", "overhead")


@dataclass
class ViewPromptConfig:
    enabled: bool = True
    """Append the view suffix; off: every view gets the bare prompt."""
    overhead_threshold_deg: float = 60.0
    """Elevation above which a view is ``overhead`` (threestudio overhead_threshold 60)."""
    front_threshold_deg: float = 45.0
    """Views within +- this of azimuth 0 are ``front`` (threestudio front_threshold 45)."""
    back_threshold_deg: float = 45.0
    """Views within +- this of azimuth 180 are ``back`` (threestudio back_threshold 45)."""
    front_suffix: str = "front view"
    side_suffix: str = "side view"
    back_suffix: str = "back view"
    overhead_suffix: str = "overhead view"

    def __post_init__(self) -> None:
        if self.front_threshold_deg < 0.0 or self.back_threshold_deg < 0.0:
            raise ValueError("view thresholds must be non-negative")
        if self.front_threshold_deg + self.back_threshold_deg > 180.0:
            raise ValueError("front_threshold_deg + back_threshold_deg must be at most 180")

    def suffix(self, view: str) -> str:
        return getattr(self, f"{view}_suffix")


def view_indices(cfg: ViewPromptConfig, azimuth_deg: Tensor, elevation_deg: Tensor) -> Tensor:
    """Index into ``VIEWS`` [C] for each camera's azimuth and elevation (degrees)."""
    az = torch.as_tensor(azimuth_deg, dtype=torch.float64).reshape(-1)
    el = torch.as_tensor(elevation_deg, dtype=torch.float64).reshape(-1)
    az = torch.remainder(az + 180.0, 360.0) - 180.0  # (-180, 180], 0 = front
    idx = torch.ones_like(az, dtype=torch.long)  # side
    idx[az.abs() <= cfg.front_threshold_deg] = 0
    idx[az.abs() >= 180.0 - cfg.back_threshold_deg] = 2
    idx[el > cfg.overhead_threshold_deg] = 3
    return idx


def view_names(cfg: ViewPromptConfig, azimuth_deg: Tensor, elevation_deg: Tensor) -> list[str]:
    """The view name (one of ``VIEWS``) of each camera."""
    return [VIEWS[i] for i in view_indices(cfg, azimuth_deg, elevation_deg).tolist()]


def view_prompt(prompt: str, view: str, cfg: ViewPromptConfig) -> str:
    """``prompt`` with the view's suffix, as threestudio writes it: "<prompt>, <suffix>"."""
    if not cfg.enabled:
        return prompt
    return f"{prompt}, {cfg.suffix(view)}"


def view_prompts(
    prompt: str, cfg: ViewPromptConfig, azimuth_deg: Tensor, elevation_deg: Tensor
) -> list[str]:
    """One prompt per camera."""
    return [view_prompt(prompt, v, cfg) for v in view_names(cfg, azimuth_deg, elevation_deg)]
