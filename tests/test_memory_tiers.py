"""Memory tiers (8, 12, 16, 24 GB): estimates from counted architectures, and --memory auto."""

import pytest
import torch

from stabledreamer.doctor.full_size_models import build, fp32_param_count, param_count
from stabledreamer.doctor.gpu_memory import (
    GIB,
    HEADROOM_GIB,
    choose_tier,
    estimate,
    tier_estimate,
    weight_gib,
)
from stabledreamer.errors import ConfigError
from stabledreamer.memory_tiers import MEMORY_TIERS, TIERS, apply_tier, check_memory_choice
from stabledreamer.presets import TEXT_PRESETS, get_preset


def test_t5_keeps_its_wo_layers_in_fp32_when_loaded_in_fp16():
    """transformers keeps T5's ``wo`` (24 layers of d_ff x d_model) in fp32 when loading fp16."""
    t5 = build("t5_xxl_encoder", dtype=torch.float16)
    cfg = t5.config
    wo = [p for n, p in t5.named_parameters() if ".wo." in n]
    assert len(wo) == cfg.num_layers and all(p.dtype == torch.float32 for p in wo)
    others = [p for n, p in t5.named_parameters() if ".wo." not in n]
    assert all(p.dtype == torch.float16 for p in others)
    counted = fp32_param_count("t5_xxl_encoder")
    assert counted == cfg.num_layers * cfg.d_ff * cfg.d_model  # from the architecture
    total = param_count("t5_xxl_encoder")
    expected = (2 * (total - counted) + 4 * counted) / GIB
    assert weight_gib("t5_xxl_encoder", True) == pytest.approx(expected)
    assert weight_gib("t5_xxl_encoder", True) > 2 * total / GIB + 1.8  # not plain fp16
    assert weight_gib("t5_xxl_encoder", False) == pytest.approx(4 * total / GIB)


def test_stage_one_estimate_counts_t5_with_its_fp32_layers():
    cfg = get_preset("standard")
    geometry = estimate(cfg)[0]
    assert geometry.text_encoder_gib == pytest.approx(weight_gib("t5_xxl_encoder", True))
    assert geometry.text_encoder_gib > 10.5  # 10.75 GiB, not the 8.87 of plain fp16


@pytest.mark.parametrize("name", TEXT_PRESETS)
@pytest.mark.parametrize("gb", TIERS)
def test_each_tier_fits_its_card(name, gb):
    need = tier_estimate(get_preset(name), gb)
    assert need + HEADROOM_GIB <= gb, f"{name} at {gb} GB: {need:.2f} GiB (estimated)"


def test_tiers_offload_more_as_memory_shrinks():
    cfg = get_preset("standard")
    needs = [tier_estimate(cfg, gb) for gb in sorted(TIERS)]
    assert needs == sorted(needs)
    assert needs[0] < needs[-1]
    # The 12 GB tier never holds T5 on the GPU; the UNet stays resident.
    apply_tier(cfg, 12)
    assert cfg.deepfloyd_if.text_encoder_offload and not cfg.deepfloyd_if.cpu_offload
    apply_tier(cfg, 8)
    assert cfg.deepfloyd_if.cpu_offload
    apply_tier(cfg, 24, cpu_offload=True)  # --cpu-offload streams everything, whatever the tier
    assert cfg.deepfloyd_if.cpu_offload and cfg.stable_diffusion.cpu_offload
    assert set(MEMORY_TIERS) == set(TIERS) == {8, 12, 16, 24}


@pytest.mark.parametrize(
    "free, total, tier",
    [(23.2, 23.6, 24), (15.2, 15.6, 16), (11.4, 11.7, 12), (7.4, 7.7, 8), (11.4, 23.6, 12)],
)
def test_auto_picks_the_cards_tier_and_steps_down_when_memory_is_in_use(free, total, tier):
    assert choose_tier(get_preset("standard"), free, total) == tier


def test_auto_on_a_card_too_small_is_none():
    assert choose_tier(get_preset("standard"), 4.0, 4.0) is None


def test_memory_choice_is_checked():
    assert check_memory_choice("auto") == "auto" and check_memory_choice(12) == "12"
    with pytest.raises(ConfigError, match="auto \\| 8 \\| 12 \\| 16 \\| 24"):
        check_memory_choice("10")
