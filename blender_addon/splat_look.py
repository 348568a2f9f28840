"""How big each Gaussian is drawn and which colour Solid mode shows for it (numpy only, no bpy).

A Gaussian with opacity ``o`` has alpha ``o * exp(-r**2 / 2)`` at Mahalanobis distance ``r`` (in
standard deviations) from its centre. Splat renderers skip it where that alpha is below a threshold
(``1/255`` in the reference 3DGS rasteriser and in gsplat), so its visible extent is

    r_max = sqrt(2 * ln(o / alpha_min)),   capped at ``MAX_SIGMAS``,

and a Gaussian with ``o <= alpha_min`` contributes nothing: it is left out (extent 0).

Solid mode (Workbench) draws every instance as a shell of one colour, so the shell should end
where the splat picture turns from object to background: a higher threshold (``SHELL_ALPHA``,
measured with ``bench/preview_fidelity.py``) than the splat cut-off. Workbench shows a material's
viewport colour per instance, not an attribute, so each Gaussian is put in a cell of an
``LEVELS**3`` sRGB grid and each cell's material shows the mean colour of the Gaussians in it
(``cell_colors``). A faint Gaussian is not an opaque disc: its shell takes a palette material whose
viewport colour is transparent (Workbench's transparent pass), as opaque as the Gaussian is on
average over the disc its shell covers (``coverage``, rounded to one of ``COVERAGE_LEVELS``);
Gaussians from ``OPAQUE_FROM`` up keep opaque shells, which hide what lies behind them.
"""

from __future__ import annotations

import functools

import numpy as np

SPLAT_ALPHA = 1.0 / 255.0
"""The reference 3DGS rasteriser's and gsplat's cut-off: alpha below 1/255 is not drawn."""
MAX_SIGMAS = 3.0
"""Largest extent in standard deviations (the reference rasteriser's 3-sigma radius)."""
SHELL_ALPHA = 0.05
"""Shell threshold of every look, measured with ``bench/preview_fidelity.py`` (PSNR against
``render()``, Workbench Flat, dB) on seven sets: the demo's reconstruction | the text path's "a
toy creature", "a rocket", "a toy car", "a mushroom" (``generate --prior catalogue``) | the
gradient blob and blocks (``reconstruct``). 0.02: 25.8 | 21.4 22.0 23.1 21.2 | 23.2 32.4 (the
text path below 22); 0.03 (four sets) 25.3 | 22.2 | 23.5 32.0; 0.04: 24.7 | 22.8 23.0 24.1 23.0
| 23.6 31.4; **0.05**: 24.1 | 23.2 23.2 24.4 23.6 | 23.6 30.6; 0.06: 23.6 | 23.6 23.3 24.7 24.2 |
23.5 30.0; 0.07: 23.2 | 24.0 23.4 24.8 24.6 | 23.4 29.4; 0.1 (four sets) 21.9 | 24.4 | 23.2 27.8.
The text path's fewer, larger Gaussians want a higher threshold than a dense reconstruction's;
0.05 to 0.07 give the best worst case (23.2-23.3) and 0.05 keeps the most of the demo. Cycles
(splat shader, five sets with the synthetic one) stays at 28.1-34.8 (0.02: 28.7-33.9)."""
LEVELS = 4
"""Grid levels per sRGB channel for the Solid-mode palette (4**3 = 64 colours, each the mean of its
Gaussians, at 4 coverage levels: 256 materials). Picking a palette entry per point costs the
depsgraph ~4 ms per 100k Gaussians whatever the palette's size, and each entry a few us more (one
process, quiet machine, each palette evaluated: 4 entries 7.3 ms, 108 7.6, 256 8.4, 500 9.2, 864
10.7; a plain ico sphere without the pick 3.2). Colour levels against Solid mode
(``bench/preview_fidelity.py``, Workbench Flat, demo | text path "a toy creature" | blob |
blocks, shell opacity 0.02): 4 levels 25.8 | 21.4 | 23.2 | 32.4 dB, 5 levels 26.0 | 21.3 | 24.6
| 32.5, 6 levels 25.7 | 21.1 | 25.3 | 32.1: more colours help the smooth gradient of the blob,
not the text path, whose shortfall was the shells' size (``SHELL_ALPHA``)."""
COVERAGE_LEVELS = (0.1, 0.18, 0.35)
"""How opaque Solid mode draws a faint Gaussian's shell: its ``coverage``, rounded to the nearest
of these in log space. Each level is a copy of the palette whose viewport colours have that
coverage (Workbench draws them in its transparent pass); one more copy is opaque. With shells at
``SHELL_ALPHA`` 0.05 no drawn Gaussian covers less than ~0.075 (1.5 x 0.05), so the levels start
there. ``bench/preview_fidelity.py`` (Workbench Flat, demo | creature, rocket, car, mushroom |
blob, blocks | synthetic, dB): (0.035, 0.09, 0.22), tuned for shells at 0.02, 24.1 | 23.2 23.2
24.4 23.6 | 23.6 30.6 | 24.1 (the same without 0.035: never used); **(0.1, 0.18, 0.35)** 24.2 |
23.3 23.5 24.6 23.7 | 23.6 30.8 | 24.4, at least as good on every set; (0.12, 0.22, 0.4) 24.3 |
23.3 23.6 24.6 23.7 | 23.6 30.8 | 23.9; (0.1, 0.2) 24.0 | 23.2 23.1 24.4 23.6 | 23.6 30.6 | 23.7.
At shells of 0.02 (demo | creature of an older run | synthetic): 4 levels (0.03 to 0.24) 25.7 |
22.6 | 24.1, (0.035, 0.09, 0.22) 25.7 | 22.5 | 24.1, (0.05, 0.15) 25.5 | 22.3 | 24.1, 8 levels no
better than 4."""
COVERAGE_GAIN = 1.5
"""``coverage`` scales the least-squares alpha by this: measured as above (opaque from 0.7), gain
1.0 25.5 | 21.9 | 22.6 dB, 1.25 25.7 | 22.1 | 24.1, 1.5 25.8 | 22.2 | 24.2, 2.0 26.0 | 22.2 |
23.6; 0.8 scores lower on all three. (Matching each Gaussian's total alpha, ``2 o / k**2``,
scored 25.7 | 22.0 | 22.9.) Faint Gaussians overlap, and a disc's flat alpha under-covers where
their Gaussian centres would pile up."""
OPAQUE_FROM = 0.75
"""Gaussians at least this opaque are drawn as opaque shells: in a dense surface they hide the
ones behind them, as in the splat picture; Workbench blends transparent surfaces in no order
(weighted by alpha and depth), so a transparent front lets the back of the object show through
(everything transparent: the demo 18.5 dB). Measured as above (gain 1.0): 0.3 25.9 | 19.4 |
19.7, 0.5 25.9 | 20.9 | 22.6, 0.7 25.5 | 21.9 | 22.6, 0.9 24.6 | 23.0 | 22.6; with gain 1.5, 0.7
25.8 | 22.2 | 24.2, 0.75 25.7 | 22.6 | 24.1, 0.8 25.6 | 22.7 | 24.1."""

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


def coverage(opacities, extent, gain: float | None = None) -> np.ndarray:
    """How opaque Solid mode draws each Gaussian's shell: ``gain`` (default ``COVERAGE_GAIN``)
    times the Gaussian's mean alpha over the disc its shell covers on screen. The projection of
    the k-sigma ellipsoid is the k-sigma ellipse of the projected Gaussian, and
    ``o * exp(-r**2 / 2)`` averaged over a disc of radius k is ``2 o (1 - exp(-k**2 / 2)) / k**2``
    (the constant alpha closest to the Gaussian there, in the least-squares sense)."""
    gain = COVERAGE_GAIN if gain is None else gain
    o = np.asarray(opacities, dtype=np.float64)
    k2 = np.asarray(extent, dtype=np.float64) ** 2
    safe = np.maximum(k2, 1e-12)
    m = np.where(k2 > 1e-12, 2.0 * o * -np.expm1(-safe / 2.0) / safe, o)
    return np.minimum(gain * m, 1.0)


@functools.lru_cache(maxsize=16)
def _level_edges(alpha_min: float, levels: tuple, opaque_from: float, gain: float) -> np.ndarray:
    """The opacities at which a Gaussian's shell moves up a coverage level (``coverage`` grows
    with the opacity), the last ``opaque_from``: the level is the number of edges at or below."""
    o = np.geomspace(alpha_min, 1.0, 20001)
    m = coverage(o, extents(o, alpha_min), gain)
    mids = np.sqrt(np.asarray(levels[:-1]) * np.asarray(levels[1:]))  # halfway in log space
    edges = o[np.minimum(np.searchsorted(m, mids), len(o) - 1)]
    return np.append(np.minimum(edges, opaque_from), opaque_from).astype(np.float32)


def solid_levels(
    opacities,
    alpha_min: float = SHELL_ALPHA,
    levels: tuple | None = None,
    opaque_from: float | None = None,
) -> np.ndarray:
    """Coverage level of each Gaussian's shell in Solid mode (uint8 index into ``levels``,
    default ``COVERAGE_LEVELS``; ``len(levels)``: opaque, from ``opaque_from`` up, default
    ``OPAQUE_FROM``). One comparison per level, summed as bytes: 0.13 ms per 100k Gaussians
    (``searchsorted`` 1.8 ms, int32 sums 0.5 ms)."""
    levels = COVERAGE_LEVELS if levels is None else tuple(levels)
    opaque_from = OPAQUE_FROM if opaque_from is None else opaque_from
    edges = _level_edges(float(alpha_min), levels, float(opaque_from), float(COVERAGE_GAIN))
    o = np.asarray(opacities, dtype=np.float32).reshape(-1)
    out = (o >= edges[0]).view(np.uint8)
    for edge in edges[1:]:
        out += (o >= edge).view(np.uint8)
    return out


def face_alpha(level_coverage) -> np.ndarray:
    """The material alpha that gives a closed shell a coverage: Workbench draws its front and
    its back face, ``1 - (1 - a)**2`` together."""
    return 1.0 - np.sqrt(1.0 - np.asarray(level_coverage, dtype=np.float64))


def palette_alphas(levels: tuple | None = None) -> np.ndarray:
    """Material alpha of each coverage level (the last, opaque, 1)."""
    levels = COVERAGE_LEVELS if levels is None else levels
    return np.append(face_alpha(levels), 1.0).astype(np.float32)


def cells(rgb, levels: int | None = None, solid_level=None) -> np.ndarray:
    """Palette cell of each sRGB colour: the nearest grid level per channel (int32), plus
    ``levels**3`` times its ``solid_level`` (coverage level) where given.

    In float32 throughout (floor, then a float dot product: exact, as cells < 2**24) and
    converted once: numpy's float-to-int casts and integer dot product cost the live preview ~1
    ms more per 100k Gaussians."""
    levels = LEVELS if levels is None else levels
    q = np.clip(np.asarray(rgb, dtype=np.float32), 0.0, 1.0)
    q *= np.float32(levels - 1)
    q += np.float32(0.5)
    np.floor(q, out=q)
    c = q @ np.array([levels * levels, levels, 1], dtype=np.float32)
    if solid_level is not None:
        c += np.asarray(solid_level) * np.float32(levels**3)
    return c.astype(np.int32)


@functools.lru_cache(maxsize=4)
def _grid(levels: int) -> np.ndarray:
    g = np.arange(levels, dtype=np.float32) / (levels - 1)
    r, gg, b = np.meshgrid(g, g, g, indexing="ij")
    return np.stack([r.ravel(), gg.ravel(), b.ravel()], axis=1)


def cell_centres(levels: int | None = None) -> np.ndarray:
    """The grid colour of every cell (sRGB, ``[levels**3, 3]``), in ``cells`` order."""
    return _grid(LEVELS if levels is None else levels).copy()


MEAN_SAMPLE = 20_000
"""Cell colours are averaged over at most this many Gaussians (an even stride through them): the
mean of a cell that narrow barely changes, and the whole 100k costs more than the rest of Python's
share of an update."""


def cell_colors(rgb, index, levels: int | None = None, sample: int = MEAN_SAMPLE) -> np.ndarray:
    """Mean sRGB colour of the Gaussians in each colour cell (``[levels**3, 3]``; the grid colour
    where a cell is empty); ``index`` may carry coverage levels (``cells``): every level of a
    colour shows the same colour."""
    levels = LEVELS if levels is None else levels
    rgb = np.asarray(rgb, dtype=np.float32)
    index = np.asarray(index)
    step = max(1, -(-len(index) // sample))
    n = levels**3
    rgb, index = rgb[::step], index[::step] % n
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
