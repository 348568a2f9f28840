"""Gaussian regularisers: zero inside their bounds, positive and pulling back outside."""

import math

import pytest
import torch

from stabledreamer.optim.regularizers import RegularizerConfig, regularization_losses, weighted_sum


def _params(scales, means=None, opacity=0.0):
    n = scales.shape[0]
    return {
        "means": torch.zeros(n, 3) if means is None else means,
        "scales": torch.log(scales).requires_grad_(),
        "opacities": torch.full((n,), opacity),
    }


def test_inside_bounds_costs_nothing():
    cfg = RegularizerConfig(max_scale=0.1, max_anisotropy=10.0, position_radius=1.0)
    p = _params(torch.tensor([[0.05, 0.02, 0.01]]), means=torch.tensor([[0.5, 0.0, 0.0]]))
    terms = regularization_losses(p, cfg)
    for name in ("reg_scale", "reg_anisotropy", "reg_position"):
        assert terms[name].item() == 0.0


def test_each_bound_is_enforced():
    cfg = RegularizerConfig(max_scale=0.1, max_anisotropy=10.0, position_radius=1.0)
    big = regularization_losses(_params(torch.tensor([[0.5, 0.5, 0.5]])), cfg)
    assert big["reg_scale"].item() == pytest.approx(math.log(5.0) ** 2, rel=1e-5)
    assert big["reg_anisotropy"].item() == 0.0
    needle = _params(torch.tensor([[0.05, 0.001, 0.001]]))
    terms = regularization_losses(needle, cfg)
    assert terms["reg_anisotropy"].item() > 0
    terms["reg_anisotropy"].backward()
    g = needle["scales"].grad[0]
    assert g[0] > 0 and g[1] + g[2] < 0  # shrink the long axis, grow the short ones
    far = regularization_losses(
        _params(torch.full((1, 3), 0.01), means=torch.tensor([[0.0, 2.0, 0.0]])), cfg
    )
    assert far["reg_position"].item() == pytest.approx(1.0)


def test_weights_apply_by_name():
    p = _params(torch.tensor([[0.5, 0.5, 0.5]]), opacity=2.0)
    terms = regularization_losses(p, RegularizerConfig())
    off = RegularizerConfig(
        scale_weight=0.0, anisotropy_weight=0.0, position_weight=0.0, opacity_weight=0.0
    )
    assert weighted_sum(terms, off) == 0
    only_opacity = RegularizerConfig(scale_weight=0.0, opacity_weight=2.0)
    total = weighted_sum(terms, only_opacity)
    assert torch.isclose(total, 2.0 * torch.sigmoid(torch.tensor(2.0)))
