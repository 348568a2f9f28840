"""GPU memory tiers: where the models of a text-to-3D run live, for the cards people have.

A tier decides where each model's weights live (on the GPU, or in CPU memory streamed to the GPU
layer by layer: ``cpu_offload``, ``text_encoder_offload``), in which precision, and whether the
SD VAE encoder recomputes its activations (``vae_gradient_checkpointing``). Which models a run
uses is the model settings' business, not the tier's. ``--memory auto`` picks the tier from the
GPU's free memory (``doctor.gpu_memory.choose_tier``); the estimates per tier are in
``doctor.gpu_memory`` and docs/gpu.md (estimated from counted architectures, not yet measured).

- 24 GB: everything resident, VAE checkpointing off (the fastest: no recomputation).
- 16 GB: everything resident, VAE checkpointing on (stage 2's activations about halved).
- 12 GB: the text encoders stream from CPU memory while they encode the prompt (once per prompt);
  the UNets stay resident. Stage 1 then never holds T5-XXL (10.75 GiB in fp16) on the GPU.
- 8 GB: stage 1's T5 and UNet both stream (IF-I-XL: 8 GiB of weights copied per step: slower);
  stage 2's SD stays resident with VAE checkpointing.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import ConfigError

TIERS: tuple[int, ...] = (8, 12, 16, 24)
MEMORY_CHOICES: tuple[str, ...] = ("auto", *(str(t) for t in TIERS))


@dataclass(frozen=True)
class GuidancePlacement:
    cpu_offload: bool = False
    text_encoder_offload: bool = False
    half_precision: bool = True


@dataclass(frozen=True)
class MemoryTier:
    gb: int
    deepfloyd_if: GuidancePlacement
    stable_diffusion: GuidancePlacement
    vae_gradient_checkpointing: bool


RESIDENT = GuidancePlacement()
TEXT_STREAMED = GuidancePlacement(text_encoder_offload=True)
ALL_STREAMED = GuidancePlacement(cpu_offload=True, text_encoder_offload=True)

MEMORY_TIERS: dict[int, MemoryTier] = {
    24: MemoryTier(24, RESIDENT, RESIDENT, vae_gradient_checkpointing=False),
    16: MemoryTier(16, RESIDENT, RESIDENT, vae_gradient_checkpointing=True),
    12: MemoryTier(12, TEXT_STREAMED, TEXT_STREAMED, vae_gradient_checkpointing=True),
    8: MemoryTier(8, ALL_STREAMED, TEXT_STREAMED, vae_gradient_checkpointing=True),
}


def check_memory_choice(value: str | int) -> str:
    v = str(value).strip().lower()
    if v not in MEMORY_CHOICES:
        raise ConfigError(f"--memory {value!r}: choose {' | '.join(MEMORY_CHOICES)}")
    return v


def apply_tier(cfg, gb: int | None, cpu_offload: bool = False) -> None:
    """Set ``cfg``'s (a ``RunConfig``) model placement and precision to tier ``gb`` (None: keep
    them), then with ``cpu_offload`` (``--cpu-offload``) stream every model from CPU memory."""
    if gb is not None:
        _apply(cfg, MEMORY_TIERS[int(gb)])
    if cpu_offload:
        cfg.deepfloyd_if.cpu_offload = cfg.stable_diffusion.cpu_offload = True


def _apply(cfg, tier: MemoryTier) -> None:
    for gcfg, place in (
        (cfg.deepfloyd_if, tier.deepfloyd_if),
        (cfg.stable_diffusion, tier.stable_diffusion),
    ):
        gcfg.cpu_offload = place.cpu_offload
        gcfg.text_encoder_offload = place.text_encoder_offload
        gcfg.half_precision = place.half_precision
    cfg.stable_diffusion.vae_gradient_checkpointing = tier.vae_gradient_checkpointing
