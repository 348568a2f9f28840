"""The real models' architectures, written in code: same shapes, FLOPs and memory, random weights.

For speed and memory figures without downloading weights (``bench/sds_step.py --full-size``) and
for parameter counts (``stabledreamer doctor``'s GPU memory estimate). Built on the ``meta`` device
they cost no memory: ``param_count`` and ``count_flops`` work on any machine.

Sources (the published diffusers configs):
- ``if_unet``: DeepFloyd/IF-I-XL-v1.0 ``unet/config.json`` (blocks 704/1408/2112/2816, 3 layers
  per block, 64-channel heads, T5 hidden 4096 projected to 2816, learned variance: 6 channels).
- ``t5_xxl_encoder``: the T5 v1.1 XXL encoder IF uses (d_model 4096, 24 layers, 64 heads, gated
  GELU 10240).
- ``sd_unet``: stable-diffusion-2-1-base ``unet/config.json`` (320/640/1280/1280, linear
  projections, head dims 5/10/20/20, cross-attention 1024, sample 64).
- ``sd_vae``: the SD 1.x/2.x AutoencoderKL (128/256/512/512, 2 layers per block, 4 latents, 8x).
- ``sd_text_encoder``: SD 2.x's OpenCLIP ViT-H/14 text tower (1024 wide, 23 layers, 16 heads).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch

IF_UNET = dict(
    sample_size=64,
    in_channels=3,
    out_channels=6,
    layers_per_block=3,
    block_out_channels=(704, 1408, 2112, 2816),
    down_block_types=("ResnetDownsampleBlock2D",) + ("SimpleCrossAttnDownBlock2D",) * 3,
    up_block_types=("SimpleCrossAttnUpBlock2D",) * 3 + ("ResnetUpsampleBlock2D",),
    mid_block_type="UNetMidBlock2DSimpleCrossAttn",
    cross_attention_dim=2816,
    encoder_hid_dim=4096,
    encoder_hid_dim_type="text_proj",
    attention_head_dim=64,
    addition_embed_type="text",
    addition_embed_type_num_heads=64,
    cross_attention_norm="group_norm",
    resnet_time_scale_shift="scale_shift",
    act_fn="gelu",
)
SD_UNET = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    cross_attention_dim=1024,
    attention_head_dim=(5, 10, 20, 20),
    use_linear_projection=True,
    act_fn="silu",
    norm_num_groups=32,
)
SD_VAE = dict(
    in_channels=3,
    out_channels=3,
    latent_channels=4,
    block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    layers_per_block=2,
    norm_num_groups=32,
    act_fn="silu",
    sample_size=512,
    scaling_factor=0.18215,
)
TEXT_TOKENS = 77
"""Tokens per prompt for both text encoders (diffusers' IF and SD pipelines)."""


def if_unet():
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(**IF_UNET)


def sd_unet():
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(**SD_UNET)


def sd_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(**SD_VAE)


def t5_xxl_encoder():
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(
        T5Config(
            vocab_size=32128,
            d_model=4096,
            d_kv=64,
            d_ff=10240,
            num_layers=24,
            num_heads=64,
            feed_forward_proj="gated-gelu",
        )
    )


def sd_text_encoder():
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(
        CLIPTextConfig(
            vocab_size=49408,
            hidden_size=1024,
            intermediate_size=4096,
            num_hidden_layers=23,
            num_attention_heads=16,
            max_position_embeddings=TEXT_TOKENS,
            hidden_act="gelu",
            projection_dim=512,
        )
    )


BUILDERS: dict[str, Callable[[], Any]] = {
    "if_unet": if_unet,
    "t5_xxl_encoder": t5_xxl_encoder,
    "sd_unet": sd_unet,
    "sd_vae": sd_vae,
    "sd_text_encoder": sd_text_encoder,
}


def build(name: str, device: str | torch.device = "meta", dtype: torch.dtype = torch.float32):
    """Model ``name`` of ``BUILDERS`` with random weights (none at all on ``meta``), in eval mode
    and frozen, as the guidance uses it."""
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # built in ``dtype``: no fp32 copy on the GPU first
    try:
        with torch.device(device):
            model = BUILDERS[name]()
    finally:
        torch.set_default_dtype(default)
    if dtype != torch.float32:
        diffusers_log = logging.getLogger("diffusers")
        level = diffusers_log.level
        diffusers_log.setLevel(logging.ERROR)  # its "keep in float32" note for plain .to(dtype)
        try:
            model = model.to(dtype)
        finally:
            diffusers_log.setLevel(level)
        if dtype == torch.float16:  # as from_pretrained(torch_dtype=float16) loads it
            for module_name, module in model.named_modules():
                if _kept_in_fp32(model, module_name):
                    module.float()
    return model.eval().requires_grad_(False)


def _kept_in_fp32(model: Any, param_name: str) -> bool:
    """Whether ``from_pretrained(..., torch_dtype=float16)`` keeps this in fp32: transformers
    keeps the modules named in ``_keep_in_fp32_modules`` (T5: ``wo``, the feed-forward output
    projections, for fp16 overflow) in fp32 when loading fp16, and only then."""
    keep = getattr(model, "_keep_in_fp32_modules", None) or ()
    return any(part in keep for part in param_name.split("."))


def param_count(name: str) -> int:
    """Parameters of model ``name`` (built on ``meta``: no memory, about a second)."""
    return sum(p.numel() for p in build(name).parameters())


def fp32_param_count(name: str) -> int:
    """Parameters of model ``name`` that stay fp32 when it is loaded in fp16 (T5: its ``wo``)."""
    model = build(name)
    return sum(p.numel() for n, p in model.named_parameters() if _kept_in_fp32(model, n))


def weight_bytes(name: str, half_precision: bool) -> int:
    """Bytes of model ``name``'s weights as loaded: fp32, or fp16 with the kept-fp32 modules."""
    total = param_count(name)
    if not half_precision:
        return 4 * total
    kept = fp32_param_count(name)
    return 2 * (total - kept) + 4 * kept


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs (multiply-add = 2) of the matmuls and convolutions ``fn`` runs (its forward and
    any backward it calls), counted by ``torch.utils.flop_counter`` from shapes: run it on
    ``meta`` tensors and nothing is computed."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return int(counter.get_total_flops())
