"""What IF and SD guidance share (guidance.diffusion): prediction types, CFG convention, and the
VAE's latent sample drawn from the run's generator. Tiny random models, offline."""

import json
import shutil

import pytest
import torch

from stabledreamer.cameras import orbit_cameras
from stabledreamer.guidance.base import GuidanceContext, GuidanceError
from stabledreamer.guidance.deepfloyd_if import DeepFloydIFConfig, DeepFloydIFGuidance
from stabledreamer.guidance.diffusion import (
    classifier_free_guidance,
    from_threestudio_scale,
    to_epsilon,
)
from stabledreamer.guidance.stable_diffusion import StableDiffusionConfig, StableDiffusionGuidance


def _ctx(n=2) -> GuidanceContext:
    cams = orbit_cameras([0.0, 180.0][:n], 10.0, 2.5, 49.0, 32, 32)
    return GuidanceContext(cams, torch.ones(n, 3), 0)


def _build(which, folder):
    if which == "if":
        return DeepFloydIFGuidance("a chair", DeepFloydIFConfig(model=str(folder)))
    cfg = StableDiffusionConfig(model=str(folder), resolution=64)
    return StableDiffusionGuidance("a chair", cfg)


def _with_prediction_type(tiny_models, which, kind, tmp_path):
    dst = tmp_path / which
    shutil.copytree(tiny_models / which, dst)
    path = dst / "scheduler" / "scheduler_config.json"
    sched = json.loads(path.read_text())
    sched["prediction_type"] = kind
    path.write_text(json.dumps(sched))
    return dst


def _raw_guided(g, x_t, t, ctx):
    """The UNet's own output with CFG, no conversion: what the guidance returned before."""
    cond, uncond = g.embeddings.for_cameras(ctx.cameras)
    with torch.no_grad():
        out = g.unet(torch.cat([x_t, x_t]), torch.cat([t, t]),
                     encoder_hidden_states=torch.cat([uncond, cond])).sample  # fmt: skip
    out = g._noise_output(out).float()
    u, c = out.chunk(2)
    return u, c


@pytest.mark.parametrize("which, kind", [("if", "sample"), ("sd", "v_prediction")])
def test_other_prediction_types_are_converted_to_noise(which, kind, tiny_models, tmp_path):
    g = _build(which, _with_prediction_type(tiny_models, which, kind, tmp_path))
    assert g.prediction_type == kind
    ch = 3 if which == "if" else 4
    x_t = torch.randn(2, ch, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([300, 800])
    ctx = _ctx()
    u, c = _raw_guided(g, x_t, t, ctx)
    a, s = (v.view(-1, 1, 1, 1) for v in g.alphas_sigmas(t))
    if kind == "v_prediction":  # v = a eps - s x0  =>  eps = a v + s x_t
        eps_u, eps_c = a * u + s * x_t, a * c + s * x_t
    else:  # x0  =>  eps = (x_t - a x0) / s
        eps_u, eps_c = (x_t - a * u) / s, (x_t - a * c) / s
    expected = eps_u + g.cfg.guidance_scale * (eps_c - eps_u)
    got = g.predict_noise(x_t, t, ctx)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(got, u + g.cfg.guidance_scale * (c - u), atol=1e-3)


@pytest.mark.parametrize("which", ["if", "sd"])
def test_an_unknown_prediction_type_is_refused(which, tiny_models, tmp_path):
    with pytest.raises(GuidanceError, match="prediction_type.*flow"):
        _build(which, _with_prediction_type(tiny_models, which, "flow", tmp_path))


def test_v_to_epsilon_inverts_the_forward_process():
    gen = torch.Generator().manual_seed(1)
    x0, eps = torch.randn(3, 4, generator=gen), torch.randn(3, 4, generator=gen)
    ab = torch.tensor([0.9, 0.5, 0.05]).view(3, 1)
    a, s = ab.sqrt(), (1 - ab).sqrt()
    x_t = a * x0 + s * eps
    v = a * eps - s * x0
    torch.testing.assert_close(to_epsilon(v, x_t, a, s, "v_prediction"), eps)
    torch.testing.assert_close(to_epsilon(x0, x_t, a, s, "sample"), eps)
    assert to_epsilon(eps, x_t, a, s, "epsilon") is eps


def test_cfg_scale_relation_to_threestudio():
    """threestudio/DreamFusion apply eps_c + s (eps_c - eps_u); ours eps_u + s' (eps_c - eps_u)
    with s' = s + 1: the defaults are threestudio's IF 20 and SD 100."""
    gen = torch.Generator().manual_seed(2)
    u, c = torch.randn(5, generator=gen), torch.randn(5, generator=gen)
    for s in (0.0, 7.5, 20.0, 100.0):
        threestudio = c + s * (c - u)
        torch.testing.assert_close(classifier_free_guidance(u, c, from_threestudio_scale(s)),
                                   threestudio)  # fmt: skip
    assert DeepFloydIFConfig().guidance_scale == from_threestudio_scale(20.0) == 21.0
    assert StableDiffusionConfig().guidance_scale == from_threestudio_scale(100.0) == 101.0


def test_vae_latent_sample_draws_from_the_run_generator(tiny_models):
    """A resumed stage 2 draws the same latent noise: the global RNG must not matter."""
    g = _build("sd", tiny_models / "sd")
    rgb = torch.rand(2, 32, 32, 3, generator=torch.Generator().manual_seed(3))
    zs = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)
        zs.append(g.encode(rgb, torch.Generator().manual_seed(7)))
    torch.testing.assert_close(zs[0], zs[1], rtol=0, atol=0)
    other = g.encode(rgb, torch.Generator().manual_seed(8))
    assert not torch.equal(zs[0], other)  # it is a sample, not the mean
