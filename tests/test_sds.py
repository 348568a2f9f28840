"""The shared SDS module: the reparametrisation identity, x0_hat, annealing schedules."""

import pytest
import torch

from stabledreamer.cameras import orbit_cameras
from stabledreamer.guidance.base import GuidanceContext
from stabledreamer.optim.sds import NoiseConfig, sample_timesteps, sds_loss, t_max_at, weight


class FixedGuidance:
    """A pixel-space guidance whose noise prediction is a fixed function of x_t."""

    name = "fixed"
    num_train_timesteps = 1000

    def __init__(self):
        self.a = torch.linspace(0.999, 0.01, 1000)  # alpha-bar

    def encode(self, rgb, generator=None):
        return rgb.permute(0, 3, 1, 2) * 2 - 1

    def decode(self, x):
        return ((x + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1)

    def alphas_sigmas(self, t):
        a = self.a[t]
        return a.sqrt(), (1 - a).sqrt()

    def predict_noise(self, x_t, t, ctx):
        return torch.tanh(x_t) * 0.3 + 0.1


def _ctx(b):
    return GuidanceContext(orbit_cameras([0.0] * b, 0.0, 2.5, 49.0, 8, 8), torch.ones(b, 3), 0)


@pytest.mark.parametrize("weighting", ["sds", "uniform", "snr"])
def test_gradient_is_weighted_noise_residual(weighting):
    g = FixedGuidance()
    rgb = torch.rand(3, 8, 8, 3, requires_grad=True)
    t = torch.tensor([20, 500, 980])
    cfg = NoiseConfig(weighting=weighting)
    out = sds_loss(g, rgb, _ctx(3), t, cfg, torch.Generator().manual_seed(1))
    out.loss.backward()
    # Recompute eps from x_t: eps = (x_t - alpha x) / sigma.
    alpha, sigma = (v.view(3, 1, 1, 1) for v in g.alphas_sigmas(t))
    x = g.encode(rgb.detach())
    eps = (out.x_t - alpha * x) / sigma
    expected_dx = weight(cfg, alpha, sigma) * (g.predict_noise(out.x_t, t, None) - eps) / 3
    # d/d rgb = d/dx * 2 (encode scales by 2), permuted back to [B, H, W, 3]
    torch.testing.assert_close(
        rgb.grad, (2 * expected_dx).permute(0, 2, 3, 1), rtol=1e-4, atol=1e-5
    )


def test_x0_hat_and_reconstruction_identity():
    g = FixedGuidance()
    rgb = torch.rand(2, 8, 8, 3)
    t = torch.tensor([100, 700])
    out = sds_loss(
        g, rgb, _ctx(2), t, NoiseConfig(weighting="uniform"), torch.Generator().manual_seed(0)
    )
    alpha, sigma = (v.view(2, 1, 1, 1) for v in g.alphas_sigmas(t))
    eps_hat = g.predict_noise(out.x_t, t, None)
    torch.testing.assert_close(out.x0_hat, (out.x_t - sigma * eps_hat) / alpha)
    # eps_hat - eps == (alpha / sigma) (x - x0_hat): SDS is a reconstruction towards x0_hat.
    eps = (out.x_t - alpha * out.x) / sigma
    torch.testing.assert_close(
        eps_hat - eps, (alpha / sigma) * (out.x - out.x0_hat), rtol=1e-4, atol=1e-4
    )


def test_nan_from_guidance_is_zeroed_and_clipped():
    class NaNGuidance(FixedGuidance):
        def predict_noise(self, x_t, t, ctx):
            e = torch.full_like(x_t, 50.0)
            e[:, 0] = float("nan")
            return e

    rgb = torch.rand(1, 4, 4, 3, requires_grad=True)
    out = sds_loss(
        NaNGuidance(),
        rgb,
        _ctx(1),
        torch.tensor([500]),
        NoiseConfig(weighting="uniform", grad_clip=1.0),
    )
    out.loss.backward()
    assert torch.isfinite(rgb.grad).all()
    assert out.grad[:, 0].abs().max() == 0
    assert out.grad.abs().max() <= 1.0


def test_schedules():
    lin = NoiseConfig(t_max_start=0.98, t_max_end=0.5, schedule="linear")
    assert t_max_at(lin, 0.0) == pytest.approx(0.98)
    assert t_max_at(lin, 0.5) == pytest.approx(0.74)
    assert t_max_at(lin, 1.0) == pytest.approx(0.5)
    sq = NoiseConfig(t_max_start=0.98, t_max_end=0.5, schedule="sqrt")
    assert t_max_at(sq, 0.25) == pytest.approx(0.98 - 0.48 * 0.5)
    const = NoiseConfig(schedule="constant")
    assert t_max_at(const, 0.9) == pytest.approx(0.98)
    step = NoiseConfig(t_max_start=0.9, t_max_end=0.3, schedule="step", milestones=(0.3, 0.6))
    assert [round(t_max_at(step, p), 3) for p in (0.0, 0.3, 0.59, 0.6, 1.0)] == [
        0.9,
        0.6,
        0.6,
        0.3,
        0.3,
    ]


def test_sampled_timesteps_respect_annealed_range():
    cfg = NoiseConfig(t_min=0.1, t_max_start=0.9, t_max_end=0.4, schedule="linear")
    gen = torch.Generator().manual_seed(0)
    early = sample_timesteps(cfg, 0.0, 4000, 1000, gen)
    late = sample_timesteps(cfg, 1.0, 4000, 1000, gen)
    assert early.min() >= 100 and early.max() <= 900 and early.max() > 850
    assert late.min() >= 100 and late.max() <= 400 and late.max() > 380


def test_bad_noise_config_is_refused():
    with pytest.raises(ValueError, match="schedule"):
        NoiseConfig(schedule="cosine")
    with pytest.raises(ValueError, match="t_min"):
        NoiseConfig(t_min=0.9, t_max_end=0.5)
