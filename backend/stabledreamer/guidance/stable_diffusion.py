"""Stable Diffusion guidance: a latent diffusion model (StableDreamer stage 2, colour and detail).

Renders go through the VAE encoder *with gradients* at the configured size (512 default):
x = vae.encode(2 rgb - 1).latent_dist.sample(generator) (or .mean) x scaling_factor, so the SDS
gradient in latent space reaches the renders; the sample draws from the run's generator.
``decode`` runs the VAE decoder (debug strips only). Prompts, schedule, CFG and prediction types:
``diffusion.DiffusionGuidance``; the text encoder is CLIP.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..models.sets import default_model
from .diffusion import DiffusionConfig, DiffusionGuidance, from_threestudio_scale
from .loading import load_weights, resize_renders
from .vae_checkpointing import enable_vae_checkpointing

SD_LATENT_SIDE = 64
"""SD 1.x/2.x-base are trained on 512² images: 64² latents (the VAE downsamples 8x)."""


@dataclass
class StableDiffusionConfig(DiffusionConfig):
    model: str = default_model("stable_diffusion")
    """Hub id or local folder (diffusers layout); the default set's (``models.sets``, where the
    hub ids are kept and where each was last confirmed). SD 2.1-base is threestudio's
    stable-diffusion-guidance default; Stability AI withdrew
    ``stabilityai/stable-diffusion-2-1-base`` from the hub in November 2025, and the
    ``sd2-community`` organisation keeps the same files (diffusers layout, safetensors), the
    mirror projects moving off the withdrawn id switched to. Unofficial: any SD 1.5/2.x
    diffusers folder or id works here (v-prediction models too: see ``guidance.diffusion``)."""
    guidance_scale: float = from_threestudio_scale(100.0)
    """Classifier-free guidance scale, eps_u + s (eps_c - eps_u): 101 is DreamFusion's w = 100
    (Sec. 3.2) and threestudio's dreamfusion-sd guidance_scale 100, both applied as
    eps_c + 100 (eps_c - eps_u) (see ``guidance.diffusion``)."""
    resolution: int = 512
    """Renders are resized to this before the VAE (SD 1.x/2.x-base work at 512 x 512: 64²
    latents). Cheaper renders are upsampled to it, so the UNet sees its native latent size."""
    sample_latent: bool = True
    """Encode with ``latent_dist.sample()`` (threestudio); False: the mean."""
    variant: str | None = "fp16"
    """Weight files to load first: ``fp16`` reads ``*.fp16.safetensors`` (SD 2.1-base ships
    them next to its fp32 files: its UNet is 1.7 GB instead of 3.5 GB). A source without them
    falls back to the default files; None: always the default files. On the CPU the weights are
    upcast to fp32 after loading (fp16-rounded values: for the full fp32 weights set None too
    when ``half_precision`` is off)."""
    vae_gradient_checkpointing: bool | None = None
    """Keep only each VAE encoder layer's input for the backward pass and recompute the layer
    then (``vae_checkpointing``): the encoder's saved activations, most of stage 2's memory at
    512², drop by about half (measured on the CPU: 3.17 -> 1.58 GiB per 512² view in fp32) for
    one more encoder forward per step (+1.12 TFLOP per 512² view: +29 % of a full-size step's
    FLOPs). None: on with CUDA, where memory is scarce; off on the CPU, where time is."""


class StableDiffusionGuidance(DiffusionGuidance):
    """The guidance contract (``guidance.base.Guidance``) for Stable Diffusion."""

    name = "stable_diffusion"

    def __init__(self, prompt: str, cfg: StableDiffusionConfig | None = None, device=None) -> None:
        from diffusers import AutoencoderKL, UNet2DConditionModel

        super().__init__(prompt, cfg or StableDiffusionConfig(), device)
        cfg = self.cfg
        self.unet = load_weights(
            UNet2DConditionModel, self.source, "unet", cfg.variant, torch_dtype=self.dtype
        )
        self.vae = load_weights(
            AutoencoderKL, self.source, "vae", cfg.variant, torch_dtype=self.dtype
        )
        checkpointing = cfg.vae_gradient_checkpointing
        if checkpointing is None:
            checkpointing = self.device.type == "cuda"
        if checkpointing:
            enable_vae_checkpointing(self.vae)  # applies in eval mode: diffusers checks grad mode
        for m in (self.unet, self.vae):
            self.place(m)  # frozen: gradients flow through the VAE to the renders
        self.scaling_factor = float(self.vae.config.scaling_factor)

    def text_classes(self):
        from transformers import CLIPTextModel, CLIPTokenizer

        return CLIPTokenizer, CLIPTextModel

    # -- the contract -------------------------------------------------------------------------
    def encode(self, rgb: Tensor, generator: torch.Generator | None = None) -> Tensor:
        x = resize_renders(rgb, self.cfg.resolution)
        x = (x * 2.0 - 1.0).to(self.device, self.dtype)
        dist = self.vae.encode(x).latent_dist
        if self.cfg.sample_latent:
            # diffusers' sample draws from the global RNG unless given a generator: draw the
            # noise from the run's (CPU) generator instead, so resumes reproduce.
            noise = torch.randn(dist.mean.shape, generator=generator, dtype=torch.float32)
            z = dist.mean + dist.std * noise.to(dist.mean)
        else:
            z = dist.mean
        return (z * self.scaling_factor).float()

    @torch.no_grad()
    def decode(self, x: Tensor) -> Tensor:
        z = (x / self.scaling_factor).to(self.device, self.dtype)
        img = self.vae.decode(z).sample.float()
        return ((img + 1.0) / 2.0).clamp(0.0, 1.0).permute(0, 2, 3, 1)
