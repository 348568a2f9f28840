"""What DeepFloyd IF and Stable Diffusion guidance share: prompts, schedule, CFG, prediction type.

``DiffusionGuidance`` loads the scheduler, checks its ``prediction_type``, encodes the prompt
for every view once (the text encoder is then freed), and runs the UNet on the conditional and
unconditional halves with classifier-free guidance. A subclass names its text encoder, maps
renders into its model space (``encode``/``decode``) and loads its UNet (and VAE).

Classifier-free guidance is written as Ho & Salimans and diffusers' pipelines write it:
    eps_hat = eps_u + s (eps_c - eps_u).
DreamFusion and threestudio write eps_c + s' (eps_c - eps_u), which is s = s' + 1 here; so
threestudio's IF scale 20 and SD scale 100 are 21 and 101 in this project's configs
(``from_threestudio_scale``).

Prediction types (diffusers' ``DDPMScheduler.prediction_type``), with x_t = a x0 + s eps:
``epsilon`` is used as it is; ``v_prediction`` (SD 2.x 768 models) predicts v = a eps - s x0,
so eps = a v + s x_t; ``sample`` predicts x0, so eps = (x_t - a x0) / s. Anything else is refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..cameras import Cameras
from .base import GuidanceContext, GuidanceError
from .loading import (
    ViewEmbeddings,
    embed_view_prompts,
    enable_cpu_offload,
    load_component,
    load_text_encoder,
    pick_device_dtype,
    release_memory,
    resolve_source,
    text_encoder_streamed,
)
from .prompts import ViewPromptConfig

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
RECENT_PROMPTS = 8
"""Prompts whose embeddings a guidance that keeps its text encoder remembers (a few MiB each
at most: 5 x 77 x 4096 values for T5-XXL)."""
MEMO_TEXTS = 8
"""Single texts (a view's prompt, the negative prompt) a kept text encoder remembers besides
the prompts of ``RECENT_PROMPTS``: the negative prompt is the one that recurs."""
THREESTUDIO_SCALE_OFFSET = 1.0
"""This project's CFG scale minus threestudio's/DreamFusion's for the same guidance."""


def from_threestudio_scale(scale: float) -> float:
    """The scale here that matches threestudio's/DreamFusion's ``guidance_scale``."""
    return scale + THREESTUDIO_SCALE_OFFSET


def classifier_free_guidance(eps_uncond: Tensor, eps_cond: Tensor, scale: float) -> Tensor:
    """eps_hat = eps_u + s (eps_c - eps_u) (Ho & Salimans; diffusers' guidance_scale)."""
    return eps_uncond + scale * (eps_cond - eps_uncond)


def to_epsilon(out: Tensor, x_t: Tensor, alpha: Tensor, sigma: Tensor, kind: str) -> Tensor:
    """The model output ``out`` of prediction type ``kind`` as a noise prediction.

    ``alpha``/``sigma`` broadcast against ``x_t`` ([B, 1, 1, 1])."""
    if kind == "epsilon":
        return out
    if kind == "v_prediction":
        return alpha * out + sigma * x_t
    if kind == "sample":
        return (x_t - alpha * out) / sigma
    raise GuidanceError(f"unknown prediction_type {kind!r}")


def check_prediction_type(scheduler_config: Any, source: str) -> str:
    kind = str(getattr(scheduler_config, "prediction_type", "epsilon") or "epsilon")
    if kind not in PREDICTION_TYPES:
        raise GuidanceError(
            f"{source}: the scheduler's prediction_type is {kind!r}; supported are "
            f"{', '.join(PREDICTION_TYPES)} (give a model whose scheduler/scheduler_config.json "
            "says one of them)"
        )
    return kind


@dataclass
class DiffusionConfig:
    """Settings both diffusion guidances have (each subclass sets its model and scale)."""

    model: str = ""
    guidance_scale: float = 1.0
    negative_prompt: str = ""
    """Prompt of the unconditional branch; empty as in threestudio."""
    resolution: int = 64
    half_precision: bool = True
    """fp16 on CUDA (threestudio half_precision_weights); always fp32 on CPU."""
    variant: str | None = "fp16"
    cpu_offload: bool = False
    """Keep the UNet (the VAE too for Stable Diffusion, and the text encoder while it encodes
    the prompts) in CPU memory and stream them to the GPU layer by layer per forward
    (accelerate): the GPU then holds activations and one layer at a time, at the cost of a
    host-to-GPU copy of the weights every step."""
    text_encoder_offload: bool = False
    """Stream only the text encoder from CPU memory (it runs once per prompt, so this costs one
    host-to-GPU copy of its weights per prompt); the UNet stays on the GPU. The 12 GB memory
    tier sets it (``doctor.memory_tiers``)."""
    view_prompts: ViewPromptConfig = field(default_factory=ViewPromptConfig)


class DiffusionGuidance:
    """The guidance contract (``guidance.base.Guidance``) for a diffusers text-to-image model."""

    name = "diffusion"
    cfg: DiffusionConfig

    def __init__(
        self, prompt: str, cfg: DiffusionConfig, device=None, keep_text_encoder: bool = False
    ) -> None:
        from diffusers import DDPMScheduler

        self.cfg = cfg
        self.keep_text_encoder = keep_text_encoder
        """Keep the tokenizer and text encoder after encoding, so the next prompt (a long-lived
        worker's next job, ``runs.warm``) needs no load. Where the encoder waits follows the
        memory tier: a streamed one stays streamed; a resident one on a GPU is parked in CPU
        memory between prompts, so the GPU holds it only while it encodes."""
        self._text: tuple | None = None
        self._embedded: tuple | None = None
        self._recent: dict[tuple, ViewEmbeddings] = {}
        self._memo: dict[tuple, Tensor] = {}
        """With ``keep_text_encoder``, on the CPU: texts encoded alone (``_encode_kept``)."""
        """With ``keep_text_encoder``: the embeddings of the last ``RECENT_PROMPTS`` prompts
        (an artist going back to an earlier prompt encodes nothing)."""
        self.source = resolve_source(cfg.model)
        self.device, self.dtype = pick_device_dtype(cfg.half_precision, device)
        self.scheduler = load_component(DDPMScheduler, self.source, "scheduler")
        self.prediction_type = check_prediction_type(self.scheduler.config, self.source)
        self.num_train_timesteps = int(self.scheduler.config.num_train_timesteps)
        self._alphas_cumprod = self.scheduler.alphas_cumprod.to(torch.float32)
        # Prompts first: the text encoder is loaded, used and freed before the UNet arrives, so
        # the two are never in memory together.
        self.embeddings: ViewEmbeddings | None = None
        self.set_prompt(prompt)

    # -- for subclasses -----------------------------------------------------------------------
    def text_classes(self) -> tuple[type, type]:
        """(tokenizer class, text encoder class) of this model."""
        raise NotImplementedError

    def text_length(self, tokenizer) -> int:
        """Tokens per prompt."""
        return tokenizer.model_max_length

    uses_attention_mask = False
    """Whether the text encoder is given the padding mask (T5 in diffusers' IF pipeline: yes;
    CLIP in the SD pipelines: no)."""

    def _encode_texts(self, tokenizer, encoder, texts: list[str]) -> Tensor:
        tok = tokenizer(texts, padding="max_length", max_length=self.text_length(tokenizer),
                        truncation=True, return_tensors="pt")  # fmt: skip
        extra = {"attention_mask": tok.attention_mask.to(self.device)}
        out = encoder(tok.input_ids.to(self.device), **(extra if self.uses_attention_mask else {}))
        return out[0].to(self.dtype)

    def _noise_output(self, out: Tensor) -> Tensor:
        """The UNet's output channels that are the prediction (IF adds a variance)."""
        return out

    def place(self, module: torch.nn.Module) -> None:
        """Frozen, in eval mode, on the device or streamed from CPU memory (``cpu_offload``)."""
        module.eval().requires_grad_(False)
        if self.cfg.cpu_offload:
            enable_cpu_offload(module, self.device)
        else:
            module.to(self.device)

    # -- prompts ------------------------------------------------------------------------------
    def _prompt_key(self, prompt: str) -> tuple:
        """What the embeddings depend on besides the text encoder."""
        cfg = self.cfg
        length = getattr(cfg, "max_text_length", None)
        return (prompt, cfg.negative_prompt, repr(cfg.view_prompts), length)

    def set_prompt(self, prompt: str) -> None:
        """Encode ``prompt`` for every view (and the negative prompt), then free the encoder
        (or keep it: ``keep_text_encoder``). The same prompt and settings again: nothing to do."""
        key = self._prompt_key(prompt)
        if self.embeddings is not None and self._embedded == key:
            return
        tokenizer_cls, encoder_cls = self.text_classes()
        if not self.keep_text_encoder:
            self.embeddings = embed_view_prompts(
                self.source,
                tokenizer_cls,
                encoder_cls,
                prompt,
                self.cfg,
                self.device,
                self.dtype,
                self._encode_texts,
            )
            self._embedded = key
            return
        if key in self._recent:
            self.embeddings = self._recent.pop(key)
            self._recent[key] = self.embeddings  # the newest last
            self._embedded = key
            return
        if self._text is None:
            self._text = load_text_encoder(
                self.source, tokenizer_cls, encoder_cls, self.cfg, self.device, self.dtype
            )
        on_cpu = self.device.type == "cpu"
        parks = self.device.type == "cuda" and not text_encoder_streamed(self.cfg)
        if parks:
            self._text[1].to(self.device)
        try:
            # On the CPU, where a 77-token prompt through a large text tower takes seconds, a
            # view's prompt is encoded when a camera first needs it; on a GPU all at once.
            self.embeddings = ViewEmbeddings(
                prompt,
                self.cfg.negative_prompt,
                self.cfg.view_prompts,
                self._encode_kept,
                one_by_one=on_cpu,
                lazy=on_cpu,
            )
        finally:
            if parks:
                self._text[1].to("cpu")
                release_memory()
        self._embedded = key
        self._recent[key] = self.embeddings
        while len(self._recent) > RECENT_PROMPTS:
            del self._recent[next(iter(self._recent))]

    def _encode_kept(self, texts: list[str]) -> Tensor:
        """The kept encoder's ``_encode_texts``; a text encoded alone is remembered, so the
        negative prompt, the same for every prompt, is encoded once per worker."""
        tokenizer, encoder = self._text
        length = getattr(self.cfg, "max_text_length", None)
        if len(texts) != 1:
            return self._encode_texts(tokenizer, encoder, texts)
        key = (texts[0], length)
        if key not in self._memo:
            self._memo[key] = self._encode_texts(tokenizer, encoder, texts)
            while len(self._memo) > MEMO_TEXTS:
                del self._memo[next(iter(self._memo))]
        return self._memo[key]

    def prepare(self, ctx: GuidanceContext) -> None:
        """Encode the view prompts the batch's cameras need (``guidance.base``)."""
        self.embeddings.prepare(ctx.cameras)

    # -- a long-lived worker's cache (``runs.warm``) --------------------------------------------
    def models(self) -> list[torch.nn.Module]:
        """The loaded networks other than the text encoder."""
        found = (getattr(self, "unet", None), getattr(self, "vae", None))
        return [m for m in found if m is not None]

    def park(self) -> None:
        """Move the networks to CPU memory (another guidance is about to use the GPU); nothing
        to do on the CPU or when they are streamed anyway."""
        if self.device.type == "cuda" and not self.cfg.cpu_offload:
            for m in self.models():
                m.to("cpu")
            release_memory()

    def unpark(self) -> None:
        """Back on the device after ``park``."""
        if self.device.type == "cuda" and not self.cfg.cpu_offload:
            for m in self.models():
                m.to(self.device)

    # -- the contract -------------------------------------------------------------------------
    def alphas_sigmas(self, t: Tensor) -> tuple[Tensor, Tensor]:
        a = self._alphas_cumprod[t.cpu().long()]
        return a.sqrt(), (1.0 - a).sqrt()

    def view_bank(self) -> Cameras | None:
        return None

    @torch.no_grad()
    def predict_noise(self, x_t: Tensor, t: Tensor, ctx: GuidanceContext) -> Tensor:
        cond, uncond = self.embeddings.for_cameras(ctx.cameras)
        x_in = torch.cat([x_t, x_t]).to(self.device, self.dtype)
        t_in = torch.cat([t, t]).to(self.device)
        out = self.unet(x_in, t_in, encoder_hidden_states=torch.cat([uncond, cond])).sample
        out = self._noise_output(out).float()
        alpha, sigma = (v.to(out).view(-1, 1, 1, 1) for v in self.alphas_sigmas(t_in))
        x_f = torch.cat([x_t, x_t]).to(self.device, torch.float32)
        eps = to_epsilon(out, x_f, alpha, sigma, self.prediction_type)
        eps_u, eps_c = eps.chunk(2)
        return classifier_free_guidance(eps_u, eps_c, self.cfg.guidance_scale).to(x_t)
