"""How big each Gaussian is drawn and which colour Solid mode shows for it (numpy only, no bpy).

A Gaussian with opacity ``o`` has alpha ``o * exp(-r**2 / 2)`` at Mahalanobis distance ``r`` (in
standard deviations) from its centre. Splat renderers skip it where that alpha is below a threshold
(``1/255`` in the reference 3DGS rasteriser and in gsplat), so its visible extent is

    r_max = sqrt(2 * ln(o / alpha_min)),   capped at ``MAX_SIGMAS``,

and a Gaussian with ``o <= alpha_min`` contributes nothing: it is left out (extent 0).

Solid mode (Workbench) draws every instance as an opaque shell, so the shell should end where the
splat picture turns from object to background: a higher threshold (``SHELL_ALPHA``, measured with
``bench/preview_fidelity.py``) than the splat cut-off. Workbench shows a material's viewport colour
per instance, not an attribute, so each Gaussian is put in a cell of an ``LEVELS**3`` sRGB grid and
each cell's material shows the mean colour of the Gaussians in it (``cell_colors``).
"""

from __future__ import annotations

import functools

import numpy as np

SPLAT_ALPHA = 1.0 / 255.0
"""The reference 3DGS rasteriser's and gsplat's cut-off: alpha below 1/255 is not drawn."""
MAX_SIGMAS = 3.0
"""Largest extent in standard deviations (the reference rasteriser's 3-sigma radius)."""
SHELL_ALPHA = 0.02
"""Shell threshold of every look, measured with ``bench/preview_fidelity.py`` on the demo's 16,111
Gaussians (PSNR against ``render()``, Workbench Flat | Cycles splats): 1/255 18.5 | 22.5, 0.02
25.4 | 21.9, 0.05 25.5 | 20.4, 0.1 23.5 | 19.9 dB; 0.02 is near the best of both."""
LEVELS = 6
"""Grid levels per sRGB channel for the Solid-mode palette (6**3 = 216 materials)."""

LOOKS = ("POINTS", "ELLIPSOIDS", "SPLATS")
DEFAULT_LOOK = "SPLATS"
LOOK_ALPHA = {"POINTS": SHELL_ALPHA, "ELLIPSOIDS": SHELL_ALPHA, "SPLATS": SHELL_ALPHA}
"""Extent threshold of each look: all draw the same shell (Solid mode shows it in every look)."""


def extents(opacities, alpha_min: float = SHELL_ALPHA, max_sigmas: float = MAX_SIGMAS):
    """Sigmas out to which each Gaussian's alpha exceeds ``alpha_min`` (0: not drawn)."""
    o = np.asarray(opacities, dtype=np.float32).reshape(-1)
    if not 0.0 < alpha_min < 1.0:
        raise ValueError(f"alpha_min must be in (0, 1), got {alpha_min}")
    ratio = np.maximum(o / np.float32(alpha_min), 1.0)
    k = np.sqrt(2.0 * np.log(ratio, dtype=np.float32))
    return np.minimum(k, np.float32(max_sigmas)).astype(np.float32)


def cells(rgb, levels: int = LEVELS) -> np.ndarray:
    """Palette cell of each sRGB colour: the nearest grid level per channel (int32).

    In float32 throughout (floor, then a float dot product: exact, as cells < 2**24) and
    converted once: numpy's float-to-int casts and integer dot product cost the live preview ~1
    ms more per 100k Gaussians."""
    q = np.clip(np.asarray(rgb, dtype=np.float32), 0.0, 1.0)
    q *= np.float32(levels - 1)
    q += np.float32(0.5)
    np.floor(q, out=q)
    return (q @ np.array([levels * levels, levels, 1], dtype=np.float32)).astype(np.int32)


@functools.lru_cache(maxsize=4)
def _grid(levels: int) -> np.ndarray:
    g = np.arange(levels, dtype=np.float32) / (levels - 1)
    r, gg, b = np.meshgrid(g, g, g, indexing="ij")
    return np.stack([r.ravel(), gg.ravel(), b.ravel()], axis=1)


def cell_centres(levels: int = LEVELS) -> np.ndarray:
    """The grid colour of every cell (sRGB, ``[levels**3, 3]``), in ``cells`` order."""
    return _grid(levels).copy()


MEAN_SAMPLE = 20_000
"""Cell colours are averaged over at most this many Gaussians (an even stride through them): the
mean of a cell that narrow barely changes, and the whole 100k costs more than the rest of Python's
share of an update."""


def cell_colors(rgb, index, levels: int = LEVELS, sample: int = MEAN_SAMPLE) -> np.ndarray:
    """Mean sRGB colour of the Gaussians in each cell (the grid colour where a cell is empty)."""
    rgb = np.asarray(rgb, dtype=np.float32)
    index = np.asarray(index)
    step = max(1, -(-len(index) // sample))
    rgb, index = rgb[::step], index[::step]
    n = levels**3
    count = np.bincount(index, minlength=n)
    out = cell_centres(levels)
    used = count > 0
    for c in range(3):
        s = np.bincount(index, weights=rgb[:, c], minlength=n)
        out[used, c] = s[used] / count[used]
    return out.astype(np.float32)


def srgb_to_linear(c):
    """The sRGB transfer function inverted (material colours are scene-linear)."""
    c = np.asarray(c, dtype=np.float32)
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4).astype(np.float32)
