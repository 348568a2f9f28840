"""DeepFloyd IF stage I guidance: a pixel-space diffusion model at 64 x 64 (StableDreamer stage 1).

Renders are resized to 64 x 64 and mapped to x = 2 rgb - 1. The UNet predicts 6 channels (noise
and a learned variance, ``variance_type="learned_range"``); the first 3 are eps. alpha_t and
sigma_t come from the scheduler's ``alphas_cumprod``. Prompt embeddings (T5) are computed once per
prompt for each view suffix and the negative prompt; the text encoder is then freed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from .base import GuidanceContext
from .loading import (
    ViewEmbeddings,
    classifier_free_guidance,
    deepfloyd_notice,
    embed_view_prompts,
    enable_cpu_offload,
    load_component,
    load_weights,
    pick_device_dtype,
    resize_renders,
    resolve_source,
)
from .prompts import ViewPromptConfig


@dataclass
class DeepFloydIFConfig:
    model: str = "DeepFloyd/IF-I-XL-v1.0"
    """Hub id or local folder (diffusers layout); threestudio's deepfloyd-if-guidance default.
    Gated: accept the licence on its hub page and log in (``hf auth login``)."""
    guidance_scale: float = 20.0
    """Classifier-free guidance scale; threestudio's IF configs (dreamfusion-if, magic3d-coarse-if,
    ...) use guidance_scale 20."""
    negative_prompt: str = ""
    """Prompt of the unconditional branch; empty as in threestudio."""
    resolution: int = 64
    """IF stage I's image size: renders are resized to this."""
    half_precision: bool = True
    """fp16 on CUDA (threestudio half_precision_weights); always fp32 on CPU."""
    variant: str | None = "fp16"
    """Weight files to load first: ``fp16`` reads ``*.fp16.safetensors``, which IF-I-XL ships next
    to its fp32 files (half the download: about 18 GB instead of 36 GB; threestudio's
    deepfloyd-if guidance and diffusers' IF docs load ``variant="fp16"``). A source without them
    falls back to the default files; None: always the default files. On the CPU the weights are
    upcast to fp32 after loading (fp16-rounded values: for the full fp32 weights set None too
    when ``half_precision`` is off)."""
    cpu_offload: bool = False
    """Keep the UNet (and the T5 encoder while it encodes the prompts) in CPU memory and stream
    them to the GPU layer by layer per forward (accelerate): the GPU then holds activations and
    one layer at a time, at the cost of a host-to-GPU copy of the weights every step."""
    max_text_length: int = 77
    """T5 tokens per prompt; diffusers' IF pipeline uses 77."""
    view_prompts: ViewPromptConfig = field(default_factory=ViewPromptConfig)


class DeepFloydIFGuidance:
    """The guidance contract (``guidance.base.Guidance``) for DeepFloyd IF stage I."""

    name = "deepfloyd_if"

    def __init__(self, prompt: str, cfg: DeepFloydIFConfig | None = None, device=None) -> None:
        from diffusers import DDPMScheduler, UNet2DConditionModel

        self.cfg = cfg = cfg or DeepFloydIFConfig()
        deepfloyd_notice()
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
        self.unet.eval().requires_grad_(False)
        if cfg.cpu_offload:
            enable_cpu_offload(self.unet, self.device)
        else:
            self.unet.to(self.device)
        self.num_train_timesteps = int(self.scheduler.config.num_train_timesteps)
        self._alphas_cumprod = self.scheduler.alphas_cumprod.to(torch.float32)

    # -- prompts ------------------------------------------------------------------------------
    def set_prompt(self, prompt: str) -> None:
        """Encode ``prompt`` for every view (and the negative prompt), then free the encoder."""
        if self.embeddings is not None and self.embeddings.prompt == prompt:
            return
        from transformers import T5EncoderModel, T5Tokenizer

        self.embeddings = embed_view_prompts(
            self.source,
            T5Tokenizer,
            T5EncoderModel,
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
            max_length=self.cfg.max_text_length,
            truncation=True,
            add_special_tokens=True,
            return_tensors="pt",
        )
        out = encoder(
            tok.input_ids.to(self.device), attention_mask=tok.attention_mask.to(self.device)
        )
        return out[0].to(self.dtype)

    # -- the contract -------------------------------------------------------------------------
    def encode(self, rgb: Tensor) -> Tensor:
        x = resize_renders(rgb, self.cfg.resolution)
        return x * 2.0 - 1.0

    def decode(self, x: Tensor) -> Tensor:
        return ((x + 1.0) / 2.0).clamp(0.0, 1.0).permute(0, 2, 3, 1)

    def alphas_sigmas(self, t: Tensor) -> tuple[Tensor, Tensor]:
        a = self._alphas_cumprod[t.cpu().long()]
        return a.sqrt(), (1.0 - a).sqrt()

    @torch.no_grad()
    def predict_noise(self, x_t: Tensor, t: Tensor, ctx: GuidanceContext) -> Tensor:
        cond, uncond = self.embeddings.for_cameras(ctx.cameras)
        x_in = torch.cat([x_t, x_t]).to(self.device, self.dtype)
        t_in = torch.cat([t, t]).to(self.device)
        out = self.unet(x_in, t_in, encoder_hidden_states=torch.cat([uncond, cond])).sample
        eps = out[:, :3].float()  # learned variance: channels 3..5 are the variance, unused
        eps_u, eps_c = eps.chunk(2)
        return classifier_free_guidance(eps_u, eps_c, self.cfg.guidance_scale).to(x_t)
