"""The guidance contract: every guidance predicts noise.

A guidance maps renders into its own space (pixels for DeepFloyd IF and the oracle, VAE latents
for Stable Diffusion), tells the noise schedule's alpha_t and sigma_t, predicts the noise in a
noised input, classifier-free guidance already applied, may name fixed training cameras
(``view_bank``) and may get ready for a batch's cameras before its step (``prepare``). It does
nothing else: the loss, the weighting w(t), clipping, ``nan_to_num`` and the debug values are
made by ``stabledreamer.sds`` for every guidance alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from ..cameras import Cameras
from ..errors import StableDreamerError


@dataclass
class GuidanceContext:
    """What a guidance may look at besides the noised input."""

    cameras: Cameras  # the cameras of the batch (view-dependent prompts, the oracle's target views)
    background: Tensor  # [B, 3] the background each render was composited on
    step: int  # global training step


@runtime_checkable
class Guidance(Protocol):
    name: str
    num_train_timesteps: int
    """T: timesteps are integers in [0, T)."""

    def encode(self, rgb: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Renders [B, H, W, 3] in [0, 1] -> model input x [B, c, h, w], differentiable. A
        random encoding (the SD VAE's latent sample) draws from ``generator`` (the run's), never
        from the global RNG, so a resumed run draws what the uninterrupted one did."""

    def decode(self, x: Tensor) -> Tensor:
        """Model space x [B, c, h, w] -> images [B, h', w', 3] in [0, 1] (debug strips only)."""

    def alphas_sigmas(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """alpha_t, sigma_t [B] for integer timesteps t [B]: x_t = alpha_t x + sigma_t eps."""

    def predict_noise(self, x_t: Tensor, t: Tensor, ctx: GuidanceContext) -> Tensor:
        """eps_hat [B, c, h, w] for the noised input x_t at timesteps t (no grad needed)."""

    def prepare(self, ctx: GuidanceContext) -> None:
        """Get ready to predict for ``ctx``'s cameras (a diffusion model on the CPU encodes the
        view prompts they need); the trainer calls it before each step's render, so the first
        step's preparation counts before the stage clock starts, as model loading does."""

    def view_bank(self) -> Cameras | None:
        """The fixed training cameras to draw from (the oracle's cached target views), or None:
        the trainer then samples random orbit cameras."""


class GuidanceError(StableDreamerError):
    """A guidance could not be built or run; the message says what to do."""
