"""Pictures a run writes: the SDS debug strip (render | noisy | x0_hat) and a turntable sheet."""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from ..atomic import atomic_path


def to_uint8(images: Tensor) -> np.ndarray:
    """[..., H, W, 3] float in [0, 1] -> uint8 numpy."""
    return (images.detach().clamp(0, 1).cpu().numpy() * 255.0 + 0.5).astype(np.uint8)


def save_png(path: str | os.PathLike, image: Tensor) -> None:
    """Save an [H, W, 3] image atomically."""
    with atomic_path(path) as tmp:
        Image.fromarray(to_uint8(image)).save(tmp, format="PNG")


def _resize(images: Tensor, size: int) -> Tensor:  # [B, H, W, 3] -> [B, size, size, 3]
    if images.shape[1] == size and images.shape[2] == size:
        return images
    x = F.interpolate(
        images.permute(0, 3, 1, 2),
        size=(size, size),
        mode="bilinear",
        antialias=True,
        align_corners=False,
    )
    return x.permute(0, 2, 3, 1)


def debug_strip(guidance, rgb: Tensor, sds) -> Tensor:
    """[H, 3W, 3] for the first view: the render, the noised input, the one-step x0 estimate.

    This is the reparametrised-SDS picture (StableDreamer Sec. 3.1): SDS pulls the render towards
    x0_hat, so a blurry or two-faced x0_hat shows what the guidance is asking for.
    """
    with torch.no_grad():
        noisy = guidance.decode(sds.x_t[:1].float())
        x0 = guidance.decode(sds.x0_hat[:1].float())
    size = rgb.shape[1]
    row = [_resize(rgb[:1].float(), size), _resize(noisy, size), _resize(x0, size)]
    return torch.cat(row, dim=2)[0].cpu()


def image_grid(images: Tensor, columns: int) -> Tensor:
    """[B, H, W, 3] -> one [rows*H, columns*W, 3] sheet (missing cells white)."""
    B, H, W, _ = images.shape
    rows = -(-B // columns)
    sheet = torch.ones(rows * H, columns * W, 3)
    for i in range(B):
        r, c = divmod(i, columns)
        sheet[r * H : (r + 1) * H, c * W : (c + 1) * W] = images[i].detach().cpu()
    return sheet
