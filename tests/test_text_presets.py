"""The text presets feed the models what they were trained on and train every side."""

import pytest
import torch

from stabledreamer.cameras import sample_cameras
from stabledreamer.guidance.prompts import view_names
from stabledreamer.presets import TEXT_PRESETS, get_preset


@pytest.mark.parametrize("name", TEXT_PRESETS)
def test_the_top_is_trained_and_the_overhead_prompt_used(name):
    cfg = get_preset(name)
    lo, hi = cfg.camera.elevation_deg
    assert hi == 90.0  # threestudio's dreamfusion-if / random-camera range -10..90
    assert hi > cfg.deepfloyd_if.view_prompts.overhead_threshold_deg
    cams = sample_cameras(cfg.camera, 8, 8, torch.Generator().manual_seed(0), n=400)
    names = view_names(cfg.deepfloyd_if.view_prompts, cams.azimuth_deg, cams.elevation_deg)
    assert "overhead" in names
    assert cams.elevation_deg.max() > 80.0


def test_reconstruction_keeps_its_capped_elevation():
    assert get_preset("reconstruct").camera.elevation_deg == (-10.0, 60.0)


@pytest.mark.parametrize("name", TEXT_PRESETS)
def test_stable_diffusion_sees_its_native_latent_size(name):
    cfg = get_preset(name)
    assert cfg.stable_diffusion.resolution // 8 == 64  # SD 2.1-base: 512² images, 64² latents
    detail = [s for s in cfg.stages if s.guidance == "stable_diffusion"]
    assert detail and all(s.resolution <= cfg.stable_diffusion.resolution for s in detail)


def test_preview_keeps_cheap_renders():
    cfg = get_preset("preview")
    assert cfg.stages[1].resolution == 256
