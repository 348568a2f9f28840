"""Gaussian regularisers (StableDreamer Sec. 3.3): keep the Gaussians well-behaved.

Each term is named and weighted in ``RegularizerConfig``; ``regularization_losses`` returns the
unweighted terms by name and ``weighted_sum`` combines them, so logs show each term.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class RegularizerConfig:
    max_scale: float = 0.1
    """Largest allowed standard deviation (scene units, object in the unit ball)."""
    scale_weight: float = 1.0
    """Weight of mean relu(log(scale) - log(max_scale))^2 (scale bound)."""
    max_anisotropy: float = 10.0
    """Largest allowed ratio of the longest to the shortest axis (PhysGaussian uses r = 10)."""
    anisotropy_weight: float = 1.0
    """Weight of mean relu(log(max/min) - log(max_anisotropy))^2 (anisotropy bound)."""
    opacity_weight: float = 0.0
    """Weight of the mean opacity (sparsity: fewer, more decisive Gaussians). Off for
    reconstruction, where it costs PSNR; text-to-3D presets turn it on."""
    position_radius: float = 1.0
    """Gaussians should stay inside this ball (the generated object fits the unit ball)."""
    position_weight: float = 1.0
    """Weight of mean relu(|mean| - position_radius)^2 (position bound)."""


def regularization_losses(
    params: Mapping[str, Tensor], cfg: RegularizerConfig
) -> dict[str, Tensor]:
    log_s = params["scales"]  # [N, 3]
    over_scale = torch.relu(log_s - math.log(cfg.max_scale))
    aniso = log_s.max(dim=-1).values - log_s.min(dim=-1).values  # log(max / min) [N]
    over_aniso = torch.relu(aniso - math.log(cfg.max_anisotropy))
    over_radius = torch.relu(params["means"].norm(dim=-1) - cfg.position_radius)
    return {
        "reg_scale": (over_scale**2).mean(),
        "reg_anisotropy": (over_aniso**2).mean(),
        "reg_opacity": torch.sigmoid(params["opacities"]).mean(),
        "reg_position": (over_radius**2).mean(),
    }


def weighted_sum(terms: Mapping[str, Tensor], cfg: RegularizerConfig) -> Tensor:
    weights = {
        "reg_scale": cfg.scale_weight,
        "reg_anisotropy": cfg.anisotropy_weight,
        "reg_opacity": cfg.opacity_weight,
        "reg_position": cfg.position_weight,
    }
    return sum(weights[k] * v for k, v in terms.items() if weights[k] != 0.0)
