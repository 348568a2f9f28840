"""GPU memory a text-to-3D run needs, *estimated* from the models' sizes (not measured on a GPU).

Per stage: the text encoder is loaded, used once and freed before the UNet is loaded (the
guidance encodes the prompts first), so the stage's peak is the larger of
- the text encoder's weights, and
- the UNet's (and for Stable Diffusion the VAE's) weights plus the activations the VAE encoder
  keeps for the backward pass (the renders' gradients go through it), for ``camera.batch_size``
  views at the stage's render size,
plus a fixed allowance (``OVERHEAD_GIB``) for the CUDA context, the allocator's slack, gsplat's
buffers and the UNet's transient activations (no gradients flow through the UNet).

Weights: parameter counts of the published architectures (``full_size_models``) x 2 bytes (fp16,
``half_precision``) or 4. Activations: the bytes of every tensor autograd saves during the VAE
encoder's forward, counted on the ``meta`` device (shapes only, nothing computed; a tensor saved
by two operations counts twice, so this leans high). With ``cpu_offload`` the weights stay in
CPU memory and stream through the GPU one layer at a time (``OFFLOAD_RESIDENT_GIB``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

GIB = 2**30
OVERHEAD_GIB = 1.5
"""CUDA context (~0.5 GiB), allocator slack, gsplat buffers, the UNet's transient activations."""
OFFLOAD_RESIDENT_GIB = 0.5
"""What offloaded weights hold on the GPU at a time (the largest layers of the streamed model)."""
MODELS = {
    "deepfloyd_if": {"text": "t5_xxl_encoder", "resident": ("if_unet",)},
    "stable_diffusion": {"text": "sd_text_encoder", "resident": ("sd_unet", "sd_vae")},
}


@dataclass
class StageMemory:
    stage: str
    guidance: str
    text_encoder_gib: float  # while the prompts are encoded (alone)
    weights_gib: float  # resident during the steps (UNet, VAE)
    activations_gib: float  # saved for the backward pass (VAE encoder)
    peak_gib: float  # max(text encoder, weights + activations) + OVERHEAD_GIB


@functools.cache
def _params(name: str) -> int:
    from .full_size_models import param_count

    return param_count(name)


@functools.cache
def vae_encoder_saved_gib(resolution: int, views: int, bytes_per_value: int) -> float:
    """GiB autograd keeps from the SD VAE encoder's forward for ``views`` renders."""
    import torch

    from .full_size_models import build

    dtype = torch.float16 if bytes_per_value == 2 else torch.float32
    vae = build("sd_vae", dtype=dtype)
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.device("meta"):
        x = torch.zeros(views, 3, resolution, resolution, dtype=dtype, requires_grad=True)
    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        vae.encode(x)
    return total / GIB


def estimate(cfg) -> list[StageMemory]:
    """Per-stage estimate for ``cfg`` (a ``RunConfig``) with the default models' architectures
    (DeepFloyd IF-I-XL, Stable Diffusion 2.1-base); oracle stages need next to nothing."""
    out = []
    for stage in cfg.stages:
        names = MODELS.get(stage.guidance)
        if names is None:
            out.append(StageMemory(stage.name, stage.guidance, 0.0, 0.0, 0.0, OVERHEAD_GIB))
            continue
        gcfg = cfg.deepfloyd_if if stage.guidance == "deepfloyd_if" else cfg.stable_diffusion
        nbytes = 2 if gcfg.half_precision else 4
        text = _params(names["text"]) * nbytes / GIB
        weights = sum(_params(n) for n in names["resident"]) * nbytes / GIB
        if gcfg.cpu_offload:
            text = weights = OFFLOAD_RESIDENT_GIB
        acts = 0.0
        if stage.guidance == "stable_diffusion":
            acts = vae_encoder_saved_gib(gcfg.resolution, cfg.camera.batch_size, nbytes)
        peak = max(text, weights + acts) + OVERHEAD_GIB
        out.append(StageMemory(stage.name, stage.guidance, text, weights, acts, peak))
    return out


def minimum_gib(cfg) -> float:
    """The estimated GPU memory ``cfg`` needs: the largest stage peak."""
    return max(s.peak_gib for s in estimate(cfg))


def preset_table(offload: bool = False) -> dict[str, list[StageMemory]]:
    """Estimates for the text presets (preview, standard, final), optionally with CPU offload."""
    from .presets import TEXT_PRESETS, get_preset

    table = {}
    for name in TEXT_PRESETS:
        cfg = get_preset(name)
        cfg.deepfloyd_if.cpu_offload = cfg.stable_diffusion.cpu_offload = offload
        table[name] = estimate(cfg)
    return table
