"""GPU memory a text-to-3D run needs, *estimated* from the models' sizes (not measured on a GPU).

Per stage: the text encoder is loaded, used once and freed before the UNet is loaded (the
guidance encodes the prompts first), so the stage's peak is the larger of
- the text encoder's weights, and
- the UNet's (and for Stable Diffusion the VAE's) weights plus the activations the VAE encoder
  keeps for the backward pass (the renders' gradients go through it), for ``camera.batch_size``
  views at the stage's render size, checkpointed layer by layer unless
  ``stable_diffusion.vae_gradient_checkpointing`` is false (its default is on with CUDA),
plus a fixed allowance (``OVERHEAD_GIB``) for the CUDA context, the allocator's slack, gsplat's
buffers and the UNet's transient activations (no gradients flow through the UNet).

Weights: parameter counts of the published architectures (``full_size_models``) x 2 bytes
(fp16, ``half_precision``) or 4, with the modules transformers keeps in fp32 when loading fp16 at
4 bytes (T5's ``wo`` layers: T5-XXL is 10.75 GiB, not 8.87). Activations: the bytes of every
tensor autograd saves during the VAE encoder's forward, counted on the ``meta`` device (shapes
only, nothing computed; a tensor saved by two operations counts twice, so this leans high). With
``cpu_offload`` the weights stay in CPU memory and stream through the GPU one layer at a time
(``OFFLOAD_RESIDENT_GIB``); with ``text_encoder_offload`` only the text encoder does.

Memory tiers (``memory_tiers``): ``tier_estimate`` is a config's need under a tier and
``choose_tier`` the tier ``--memory auto`` takes for a GPU's free memory.
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
def weight_gib(name: str, half_precision: bool) -> float:
    """GiB of model ``name``'s weights as ``from_pretrained`` loads them (``half_precision``:
    fp16, except the modules transformers keeps in fp32: T5's ``wo`` layers)."""
    from .full_size_models import weight_bytes

    return weight_bytes(name, half_precision) / GIB


@functools.cache
def vae_encoder_saved_gib(
    resolution: int, views: int, bytes_per_value: int, checkpointing: bool = False
) -> float:
    """GiB autograd keeps from the SD VAE encoder's forward for ``views`` renders.

    With ``checkpointing`` (``guidance.vae_checkpointing``): what is saved outside the
    checkpointed layers, plus each layer's input, plus the most one layer saves (it is
    recomputed, one layer at a time, in the backward pass). Measured on the CPU (fp32, 1 view at
    512², peak process memory): 3.17 GiB plain and 1.58 GiB checkpointed, against 3.25 and 1.41
    GiB counted here (the count leaves out the gradients in flight during the backward pass)."""
    import torch

    from ..guidance.vae_checkpointing import checkpointed_layers
    from .full_size_models import build

    dtype = torch.float16 if bytes_per_value == 2 else torch.float32
    vae = build("sd_vae", dtype=dtype)
    layers = checkpointed_layers(vae.encoder)
    saved = {None: 0} | {i: 0 for i in range(len(layers))}  # bytes by layer, None = outside
    inputs = 0  # bytes of the layers' inputs
    current: list[int | None] = [None]

    def pack(t):
        saved[current[0]] += t.numel() * t.element_size()
        return t

    def enter(i):
        def hook(module, args):
            nonlocal inputs
            if current[0] is None:  # not nested in another checkpointed layer
                inputs += args[0].numel() * args[0].element_size()
                current[0] = i

        return hook

    def leave(i):
        def hook(module, args, out):
            if current[0] == i:
                current[0] = None

        return hook

    handles = []
    if checkpointing:
        for i, layer in enumerate(layers):
            handles.append(layer.register_forward_pre_hook(enter(i)))
            handles.append(layer.register_forward_hook(leave(i)))
    with torch.device("meta"):
        x = torch.zeros(views, 3, resolution, resolution, dtype=dtype, requires_grad=True)
    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        vae.encode(x)
    for h in handles:
        h.remove()
    if not checkpointing:
        return saved[None] / GIB
    most = max(saved[i] for i in range(len(layers)))
    return (saved[None] + inputs + most) / GIB


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
        text = weight_gib(names["text"], gcfg.half_precision)
        weights = sum(weight_gib(n, gcfg.half_precision) for n in names["resident"])
        if gcfg.cpu_offload or gcfg.text_encoder_offload:
            text = OFFLOAD_RESIDENT_GIB
        if gcfg.cpu_offload:
            weights = OFFLOAD_RESIDENT_GIB
        acts = 0.0
        if stage.guidance == "stable_diffusion":
            ckpt = gcfg.vae_gradient_checkpointing is not False  # None: on, with CUDA
            acts = vae_encoder_saved_gib(gcfg.resolution, cfg.camera.batch_size, nbytes, ckpt)
        peak = max(text, weights + acts) + OVERHEAD_GIB
        out.append(StageMemory(stage.name, stage.guidance, text, weights, acts, peak))
    return out


def minimum_gib(cfg) -> float:
    """The estimated GPU memory ``cfg`` needs: the largest stage peak."""
    return max(s.peak_gib for s in estimate(cfg))


def preset_table(offload: bool = False) -> dict[str, list[StageMemory]]:
    """Estimates for the text presets (preview, standard, final), optionally with CPU offload."""
    from ..presets import TEXT_PRESETS, get_preset

    table = {}
    for name in TEXT_PRESETS:
        cfg = get_preset(name)
        cfg.deepfloyd_if.cpu_offload = cfg.stable_diffusion.cpu_offload = offload
        table[name] = estimate(cfg)
    return table


CARD_SLACK_GIB = 0.5
"""Allowance for a card sold as "N GB" whose reported total is a little under N GiB (the
driver's and ECC reservations); our margin, not measured here."""
HEADROOM_GIB = 0.5
"""Kept free on top of the estimate when fitting a tier to a GPU (a desktop's display, other
programs): our margin, not measured."""


def tier_estimate(cfg, gb: int, cpu_offload: bool = False) -> float:
    """The estimated peak GiB of ``cfg`` (a ``RunConfig``, not changed) under memory tier ``gb``
    (and ``--cpu-offload``)."""
    import copy

    from ..memory_tiers import apply_tier

    tiered = copy.deepcopy(cfg)
    apply_tier(tiered, gb, cpu_offload)
    return minimum_gib(tiered)


def choose_tier(
    cfg, free_gib: float, total_gib: float | None = None, cpu_offload: bool = False
) -> int | None:
    """``--memory auto``: the card's own tier (the largest not above its total memory, with
    ``CARD_SLACK_GIB`` for cards sold as "N GB" that report a little less), stepping down while
    the estimate does not fit ``free_gib`` with ``HEADROOM_GIB`` to spare; None when even the
    8 GB tier does not fit."""
    from ..memory_tiers import TIERS

    total = free_gib if total_gib is None else total_gib
    for gb in sorted(TIERS, reverse=True):
        if gb > total + CARD_SLACK_GIB:
            continue
        if tier_estimate(cfg, gb, cpu_offload) + HEADROOM_GIB <= free_gib:
            return gb
    return None


def tier_table(cfg) -> dict[int, float]:
    """Estimated peak GiB of ``cfg`` under each tier."""
    from ..memory_tiers import TIERS

    return {gb: tier_estimate(cfg, gb) for gb in TIERS}
