"""DeepFloyd IF stage I guidance: a pixel-space diffusion model at 64 x 64 (StableDreamer stage 1).

Renders are resized to 64 x 64 and mapped to x = 2 rgb - 1. The UNet predicts 6 channels (noise
and a learned variance, ``variance_type="learned_range"``); the first 3 are the prediction.
Prompts, schedule, CFG and prediction types: ``diffusion.DiffusionGuidance``; the text encoder is
T5 (v1.1 XXL for IF-I-XL).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..models.sets import default_model
from .diffusion import DiffusionConfig, DiffusionGuidance, from_threestudio_scale
from .loading import deepfloyd_notice, load_weights, resize_renders


@dataclass
class DeepFloydIFConfig(DiffusionConfig):
    model: str = default_model("deepfloyd_if")
    """Hub id or local folder (diffusers layout); the default set's (``models.sets``): IF-I-XL,
    threestudio's deepfloyd-if-guidance default.
    Gated: accept the licence on its hub page and log in (``hf auth login``)."""
    guidance_scale: float = from_threestudio_scale(20.0)
    """Classifier-free guidance scale, eps_u + s (eps_c - eps_u): 21 is threestudio's IF configs'
    guidance_scale 20 (dreamfusion-if, magic3d-coarse-if, ...), which they apply as
    eps_c + 20 (eps_c - eps_u) (see ``guidance.diffusion``)."""
    resolution: int = 64
    """IF stage I's image size: renders are resized to this."""
    variant: str | None = "fp16"
    """Weight files to load first: ``fp16`` reads ``*.fp16.safetensors``, which IF-I-XL ships next
    to its fp32 files (half the download: about 18 GB instead of 36 GB; threestudio's
    deepfloyd-if guidance and diffusers' IF docs load ``variant="fp16"``). A source without them
    falls back to the default files; None: always the default files. On the CPU the weights are
    upcast to fp32 after loading (fp16-rounded values: for the full fp32 weights set None too
    when ``half_precision`` is off)."""
    max_text_length: int = 77
    """T5 tokens per prompt; diffusers' IF pipeline uses 77."""


class DeepFloydIFGuidance(DiffusionGuidance):
    """The guidance contract (``guidance.base.Guidance``) for DeepFloyd IF stage I."""

    name = "deepfloyd_if"

    def __init__(self, prompt: str, cfg: DeepFloydIFConfig | None = None, device=None) -> None:
        from diffusers import UNet2DConditionModel

        deepfloyd_notice()
        super().__init__(prompt, cfg or DeepFloydIFConfig(), device)
        self.unet = load_weights(
            UNet2DConditionModel, self.source, "unet", self.cfg.variant, torch_dtype=self.dtype
        )
        self.place(self.unet)

    def text_classes(self):
        from transformers import T5EncoderModel, T5Tokenizer

        return T5Tokenizer, T5EncoderModel

    uses_attention_mask = True

    def text_length(self, tokenizer) -> int:
        return self.cfg.max_text_length

    def _noise_output(self, out: Tensor) -> Tensor:
        return out[:, :3]  # learned variance: channels 3..5 are the variance, unused

    # -- the contract -------------------------------------------------------------------------
    def encode(self, rgb: Tensor, generator: torch.Generator | None = None) -> Tensor:
        x = resize_renders(rgb, self.cfg.resolution)
        return x * 2.0 - 1.0

    def decode(self, x: Tensor) -> Tensor:
        return ((x + 1.0) / 2.0).clamp(0.0, 1.0).permute(0, 2, 3, 1)
