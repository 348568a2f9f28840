"""The example-based prior: exact posterior mean, its sets, view buckets, no pose, the bank."""

from __future__ import annotations

import json

import pytest
import torch

from stabledreamer.cameras import heldout_cameras, orbit_cameras, orbit_position
from stabledreamer.guidance.base import GuidanceContext
from stabledreamer.guidance.example_prior import ExamplePriorConfig, ExamplePriorGuidance
from stabledreamer.guidance.prior_bank import (
    BankBuildConfig,
    BankObject,
    PriorBank,
    PriorBankError,
    bank_cameras,
    build_bank,
)
from stabledreamer.guidance.prompts import ViewPromptConfig, view_indices
from stabledreamer.targets.catalogue import CATALOGUE, target_mesh

PROMPTS = ("a toy car", "a snowman")
RES = 16


@pytest.fixture(scope="module")
def bank_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("prior") / "bank"
    objects = [(BankObject(p, True, "catalogue"), target_mesh(p)) for p in PROMPTS]
    cfg = BankBuildConfig(views=24, resolutions=(RES, 2 * RES), supersample=1, seed=3)
    return build_bank(objects, out, cfg, log=lambda *_: None)


@pytest.fixture(scope="module")
def bank(bank_dir):
    return PriorBank(bank_dir)


def _ctx(az, el, bg):
    cams = orbit_cameras(torch.as_tensor(az), torch.as_tensor(el), 2.5, 49.0, RES, RES)
    return GuidanceContext(cameras=cams, background=torch.as_tensor(bg).float(), step=0)


def _brute_force(bank, x_t, t, ctx, guidance, prompt, conditional, views_on, uncond="bucket"):
    """E[x0 | x_t] by the definition: every image of the set composited on the view's background,
    weights softmax(-||x_t - alpha x_i||^2 / 2 sigma^2), all in float64."""
    rgb, alpha = bank.images(RES)
    alpha_t, sigma_t = guidance.alphas_sigmas(t)
    vcfg = ViewPromptConfig(enabled=views_on)
    img_bucket = view_indices(vcfg, bank.azimuth_deg, bank.elevation_deg)
    cam_bucket = view_indices(vcfg, ctx.cameras.azimuth_deg, ctx.cameras.elevation_deg)
    out = []
    for b in range(x_t.shape[0]):
        keep = torch.ones(len(bank), dtype=torch.bool)
        mine = bank.labels == bank.index_of(prompt)
        # documented fallback: a bucket without the prompt's images counts as view prompts off
        if views_on and (mine & (img_bucket == cam_bucket[b])).any():
            if conditional or uncond == "bucket":
                keep &= img_bucket == cam_bucket[b]
        if conditional:
            keep &= mine
        bg = ctx.background[b].double()
        comp = rgb[keep].double() + (1 - alpha[keep].double()) * bg
        x = (2 * comp - 1).permute(0, 3, 1, 2)  # [n, 3, H, W]
        d = ((x_t[b].double() - alpha_t[b].double() * x) ** 2).flatten(1).sum(1)
        w = torch.softmax(-d / (2 * sigma_t[b].double() ** 2), dim=0)
        out.append((w[:, None, None, None] * x).sum(0))
    return torch.stack(out)


@pytest.mark.parametrize("views_on,uncond", [(True, "bucket"), (False, "bucket"), (True, "all")])
def test_posterior_mean_equals_brute_force(bank, views_on, uncond):
    prompt = "a toy car"
    cfg = ExamplePriorConfig(uncond=uncond, view_prompts=ViewPromptConfig(enabled=views_on))
    guidance = ExamplePriorGuidance(prompt, bank, cfg, RES)
    gen = torch.Generator().manual_seed(0)
    bg = torch.rand(4, 3, generator=gen)
    ctx = _ctx([10.0, 100.0, 190.0, 300.0], [20.0, 5.0, -30.0, 75.0], bg)
    x0 = 2 * torch.rand(4, 3, RES, RES, generator=gen) - 1
    for t_frac in (0.95, 0.6, 0.3):
        t = torch.full((4,), int(t_frac * 1000))
        a, s = guidance.alphas_sigmas(t)
        x_t = a.view(-1, 1, 1, 1) * x0 + s.view(-1, 1, 1, 1) * torch.randn(x0.shape, generator=gen)
        got_c, got_u = guidance.posterior_means(x_t, t, ctx)
        want_c = _brute_force(bank, x_t, t, ctx, guidance, prompt, True, views_on)
        want_u = _brute_force(bank, x_t, t, ctx, guidance, prompt, False, views_on, uncond)
        torch.testing.assert_close(got_c.double(), want_c, atol=2e-4, rtol=0)
        torch.testing.assert_close(got_u.double(), want_u, atol=2e-4, rtol=0)


def test_low_noise_snaps_to_an_example_and_cfg_combines(bank):
    """At low t x0 is one bank image of the prompt (composited); guidance scale s gives
    x0_u + s (x0_c - x0_u), and eps_hat follows from x0."""
    cfg = ExamplePriorConfig(guidance_scale=3.0)
    g = ExamplePriorGuidance("a snowman", bank, cfg, RES)
    rgb, alpha = bank.images(RES)
    side = view_indices(cfg.view_prompts, bank.azimuth_deg, bank.elevation_deg) == 1
    k = int(((bank.labels == 1) & side).nonzero()[0])
    ctx = _ctx([float(bank.azimuth_deg[k])], [float(bank.elevation_deg[k])], torch.ones(1, 3))
    x = (2 * (rgb[k] + (1 - alpha[k])) - 1).permute(2, 0, 1)[None]
    t = torch.tensor([2])  # sigma ~ 0.003: far below the distance to the next example
    a, s = g.alphas_sigmas(t)
    x_t = a * x + s * 0.01 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    cond, uncond = g.posterior_means(x_t, t, ctx)
    torch.testing.assert_close(cond, x, atol=1e-3, rtol=0)
    x0 = g.predict_x0(x_t, t, ctx)
    torch.testing.assert_close(x0, uncond + 3.0 * (cond - uncond))
    eps = g.predict_noise(x_t, t, ctx)
    torch.testing.assert_close(eps, (x_t - a * x0) / s, atol=1e-4, rtol=1e-4)


def test_conditional_and_unconditional_sets_differ(bank):
    """The conditional mean uses the prompt's images only; the unconditional one all objects'."""
    car = ExamplePriorGuidance("a toy car", bank, ExamplePriorConfig(), RES)
    snow = ExamplePriorGuidance("a snowman", bank, ExamplePriorConfig(), RES)
    ctx = _ctx([0.0], [20.0], torch.ones(1, 3))
    t = torch.tensor([990])
    x_t = torch.zeros(1, 3, RES, RES)  # pure noise: the mean of each set
    car_c, car_u = car.posterior_means(x_t, t, ctx)
    snow_c, snow_u = snow.posterior_means(x_t, t, ctx)
    torch.testing.assert_close(car_u, snow_u)  # unconditional: the same for every prompt
    assert (car_c - snow_c).abs().mean() > 0.05  # conditional: each prompt its own images


def test_prediction_sees_the_bucket_not_the_pose(bank):
    """Moving the camera within its view bucket leaves the prediction unchanged; crossing into
    another bucket changes it."""
    g = ExamplePriorGuidance("a toy car", bank, ExamplePriorConfig(), RES)
    gen = torch.Generator().manual_seed(2)
    x_t = torch.randn(1, 3, RES, RES, generator=gen)
    t = torch.tensor([500])
    bg = torch.rand(1, 3, generator=gen)
    base = g.predict_noise(x_t, t, _ctx([5.0], [20.0], bg))
    for az, el in ((-30.0, 20.0), (40.0, 0.0), (20.0, 50.0)):  # all front views
        torch.testing.assert_close(g.predict_noise(x_t, t, _ctx([az], [el], bg)), base)
    assert not torch.allclose(g.predict_noise(x_t, t, _ctx([180.0], [20.0], bg)), base)
    assert not torch.allclose(g.predict_noise(x_t, t, _ctx([5.0], [80.0], bg)), base)


def test_background_enters_the_composite(bank):
    g = ExamplePriorGuidance("a toy car", bank, ExamplePriorConfig(), RES)
    x_t = torch.zeros(1, 3, RES, RES)
    t = torch.tensor([50])
    white, _ = g.posterior_means(x_t, t, _ctx([0.0], [20.0], torch.ones(1, 3)))
    black, _ = g.posterior_means(x_t, t, _ctx([0.0], [20.0], torch.zeros(1, 3)))
    corner = (0, slice(None), 0, 0)  # background pixel
    assert white[corner].min() > 0.9 and black[corner].max() < -0.9


def test_unknown_prompt_is_refused_with_the_labels(bank):
    with pytest.raises(PriorBankError, match='"a toy car"; "a snowman"'):
        ExamplePriorGuidance("a teapot", bank, ExamplePriorConfig(), RES)


def test_resolution_not_in_bank_is_refused(bank):
    with pytest.raises(PriorBankError, match=r"\[16, 32\]"):
        ExamplePriorGuidance("a toy car", bank, ExamplePriorConfig(), 64)


def test_bank_views_avoid_the_heldout_ring_and_cover_the_sphere():
    cfg = BankBuildConfig(exclusion_deg=5.0, elevation_deg=(-90.0, 90.0))
    az, el = bank_cameras(cfg, 2000, torch.Generator().manual_seed(0))
    d = orbit_position(az, el, torch.ones(len(az)))
    ring = heldout_cameras(8, 8, distance=1.0).positions
    angle = torch.rad2deg(torch.acos((d @ ring.T).clamp(-1, 1))).min(dim=1).values
    assert angle.min() > 5.0
    assert el.min() < -60 and el.max() > 60  # the whole sphere when asked
    assert (d[:, 2] > 0).float().mean().item() == pytest.approx(0.5, abs=0.05)  # uniform


def test_bank_views_within_an_elevation_band():
    cfg = BankBuildConfig(elevation_deg=(-10.0, 90.0))
    az, el = bank_cameras(cfg, 500, torch.Generator().manual_seed(1))
    assert el.min() >= -10.0 and el.max() <= 90.0 and el.max() > 60.0
    with pytest.raises(PriorBankError, match="--elevation"):
        BankBuildConfig(elevation_deg=(30.0, 10.0)).validate()


def test_bank_files_and_ground_truth(bank_dir, bank):
    header = json.loads((bank_dir / "bank.json").read_text())
    assert header["resolutions"] == [RES, 2 * RES] and len(bank) == 48
    assert bank.prompts == list(PROMPTS)
    mesh = bank.target_mesh("a snowman")
    torch.testing.assert_close(mesh.vertices, target_mesh("a snowman").vertices)
    rgb16, a16 = bank.images(RES)
    rgb32, a32 = bank.images(2 * RES)
    # the small images are the large ones box-filtered (up to uint8 rounding)
    down = a32.view(-1, RES, 2, RES, 2, 1).mean(dim=(2, 4))
    assert (down - a16).abs().max() < 1.5 / 255
    with pytest.raises(PriorBankError, match="--overwrite"):
        build_bank(
            [(BankObject("x", False, "m"), target_mesh("a snowman"))], bank_dir, BankBuildConfig()
        )


def test_catalogue_has_twelve_objects_several_with_a_front():
    assert len(CATALOGUE) >= 12
    assert sum(e.has_front for e in CATALOGUE) >= 4
    assert len({e.prompt for e in CATALOGUE}) == len(CATALOGUE)
    for e in CATALOGUE:
        m = target_mesh(e.prompt)
        assert len(m.faces) > 0 and m.vertices.norm(dim=1).max() <= 0.9 + 1e-5
