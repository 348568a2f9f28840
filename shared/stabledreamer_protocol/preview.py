"""Gaussians <-> the compact preview encoding (34 bytes per Gaussian).

Two buffers travel in a ``preview`` message, both row-major, little-endian:

``position``   float32 [N, 3]   x, y, z in the world frame (Blender's: Z up, metres)  12 B
``attributes`` float16 [N, 11]                                                        22 B
    columns 0-2   log-scale: natural log of the standard deviation along local x, y, z
    columns 3-6   rotation quaternion w, x, y, z (normalised)
    columns 7-9   colour r, g, b: sRGB base colour in [0, 1]
    column  10    opacity in [0, 1] (after the sigmoid, not the logit)

Positions stay float32 because a float16 position is only good to ~1 mm at 1 m; the rest needs
no more than half precision (log-scale error <= 0.004 for |log-scale| < 8, i.e. < 0.4 % of the
scale; quaternion, colour and opacity error <= 5e-4). Two buffers rather than one interleaved
record so each decodes with a plain ``np.frombuffer`` (zero-copy) and maps to Blender attributes
(``foreach_set``) column by column. The encoding takes and returns plain numpy arrays.
"""

from __future__ import annotations

import numpy as np

LAYOUT = "gs34"
"""Value of the ``layout`` field of ``preview`` bodies; a new layout gets a new name."""
POSITION_DTYPE = np.dtype("<f4")
ATTRIBUTE_DTYPE = np.dtype("<f2")
ATTRIBUTE_COLUMNS = 11
LOG_SCALE = slice(0, 3)
QUAT = slice(3, 7)
RGB = slice(7, 10)
OPACITY = 10
RGBA = slice(7, 11)
"""Colour and opacity together: the four columns a colour attribute holds."""
BYTES_PER_GAUSSIAN = 3 * POSITION_DTYPE.itemsize + ATTRIBUTE_COLUMNS * ATTRIBUTE_DTYPE.itemsize
assert BYTES_PER_GAUSSIAN == 34

LOG_SCALE_RANGE = (-20.0, 10.0)
"""Log-scales are clipped to this range (exp(-20) m is far below anything visible)."""


def _as_2d(name: str, a, n: int | None, cols: int) -> np.ndarray:
    a = np.asarray(a, dtype=np.float32)
    if cols == 1 and a.ndim == 2 and a.shape[1] == 1:
        a = a[:, 0]
    want = (cols,) if cols > 1 else ()
    if a.ndim != 1 + len(want) or a.shape[1:] != want or (n is not None and a.shape[0] != n):
        shape = f"[{n if n is not None else 'N'}{', ' + str(cols) if cols > 1 else ''}]"
        raise ValueError(f"{name} must have shape {shape}, got {list(a.shape)}")
    return a


def pack(
    means,  # [N, 3] positions
    log_scales,  # [N, 3] log standard deviations
    quats,  # [N, 4] w x y z, any norm
    rgb,  # [N, 3] sRGB in [0, 1]
    opacities,  # [N] or [N, 1] in [0, 1]
    max_points: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Encode Gaussians as ``(position [M, 3] float32, attributes [M, 11] float16)``.

    Non-finite inputs do not leak onto the wire: a Gaussian with a non-finite position is sent
    at the origin with opacity 0; other non-finite values become 0 (or the identity rotation).
    If ``max_points`` is given and N exceeds it, the ``max_points`` most opaque Gaussians are
    kept, in their original order.
    """
    means = _as_2d("means", means, None, 3)
    n = means.shape[0]
    log_scales = _as_2d("log_scales", log_scales, n, 3)
    quats = _as_2d("quats", quats, n, 4)
    rgb = _as_2d("rgb", rgb, n, 3)
    opacities = _as_2d("opacities", opacities, n, 1)

    if max_points is not None and n > max_points:
        opa = np.nan_to_num(opacities, nan=-1.0)
        keep = np.sort(np.argpartition(-opa, max_points - 1)[:max_points]) if max_points else []
        means, log_scales, quats, rgb, opacities = (
            a[keep] for a in (means, log_scales, quats, rgb, opacities)
        )
        n = means.shape[0]

    bad = ~np.isfinite(means).all(axis=1)
    position = np.where(bad[:, None], np.float32(0), means).astype(POSITION_DTYPE, copy=False)

    attributes = np.empty((n, ATTRIBUTE_COLUMNS), dtype=ATTRIBUTE_DTYPE)
    attributes[:, LOG_SCALE] = np.clip(np.nan_to_num(log_scales, nan=0.0), *LOG_SCALE_RANGE)
    q = np.nan_to_num(quats, nan=0.0, posinf=0.0, neginf=0.0).astype(np.float64)
    norm = np.linalg.norm(q, axis=1, keepdims=True)
    identity = np.array([1.0, 0.0, 0.0, 0.0])
    q = np.where(norm > 1e-12, q / np.maximum(norm, 1e-12), identity)
    attributes[:, QUAT] = q
    attributes[:, RGB] = np.clip(np.nan_to_num(rgb, nan=0.0), 0.0, 1.0)
    opa = np.clip(np.nan_to_num(opacities, nan=0.0), 0.0, 1.0)
    attributes[:, OPACITY] = np.where(bad, 0.0, opa)
    return np.ascontiguousarray(position), attributes


def unpack(
    position: np.ndarray, attributes: np.ndarray, log_scales: bool = True
) -> dict[str, np.ndarray]:
    """Decode into float32 arrays: ``means [N,3]``, ``log_scales [N,3]`` (left out when
    ``log_scales`` is false: a viewport needs only the scales), ``scales [N,3]``, ``quats [N,4]``
    (w x y z), ``rgba [N,4]`` (colour and opacity, as a colour attribute holds them), and ``rgb
    [N,3]`` and ``opacities [N]``, which are views into ``rgba``."""
    position = np.asarray(position)
    attributes = np.asarray(attributes)
    n = position.shape[0]
    if position.shape != (n, 3) or attributes.shape != (n, ATTRIBUTE_COLUMNS):
        raise ValueError(
            f"preview arrays must be [N, 3] and [N, {ATTRIBUTE_COLUMNS}], "
            f"got {list(position.shape)} and {list(attributes.shape)}"
        )
    out = {"means": position.astype(np.float32)}
    if attributes.dtype == ATTRIBUTE_DTYPE:
        # float16 -> float32 through a 65536-entry table, each field gathered straight into its
        # own contiguous array (and the scales' exp from a second table): a third of the cost of
        # a full astype, four contiguous copies and an exp, on the live preview's path
        bits = attributes.view(np.uint16)
        as_f32, as_exp = _tables()
        if log_scales:
            out["log_scales"] = np.take(as_f32, bits[:, LOG_SCALE])
        out["scales"] = np.take(as_exp, bits[:, LOG_SCALE])
        out["quats"] = np.take(as_f32, bits[:, QUAT])
        rgba = np.take(as_f32, bits[:, RGBA])
    else:
        attrs = attributes.astype(np.float32)
        logs = np.ascontiguousarray(attrs[:, LOG_SCALE])
        if log_scales:
            out["log_scales"] = logs
        out["scales"] = np.exp(logs)
        out["quats"] = np.ascontiguousarray(attrs[:, QUAT])
        rgba = np.ascontiguousarray(attrs[:, RGBA])
    out.update(rgba=rgba, rgb=rgba[:, :3], opacities=rgba[:, 3])
    return out


_TABLES: tuple[np.ndarray, np.ndarray] | None = None


def _tables() -> tuple[np.ndarray, np.ndarray]:
    """Every float16 bit pattern as float32, and its exp (the same values ``astype`` and
    ``np.exp`` give, built once)."""
    global _TABLES
    if _TABLES is None:
        f32 = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(ATTRIBUTE_DTYPE)
        f32 = f32.astype(np.float32)
        with np.errstate(over="ignore", invalid="ignore"):
            _TABLES = (f32, np.exp(f32))
    return _TABLES


def nbytes(n: int) -> int:
    """Buffer bytes of a preview of ``n`` Gaussians (the JSON header adds a few hundred)."""
    return n * BYTES_PER_GAUSSIAN
