"""Differentiable CPU rasteriser for projected 2D Gaussians (sparse Gaussian-pixel pairs).

Semantics are gsplat's "classic" kernel: pixel centres at (x + 0.5, y + 0.5), alpha =
min(0.999, o exp(-sigma)), pairs with alpha < 1/255 skipped, front-to-back compositing in depth
order, and a pixel stops before the Gaussian that would bring its transmittance to <= 1e-4.

How it stays fast in plain torch:
- Only exact pairs are generated: per Gaussian the pixel rows of its alpha >= 1/255 ellipse, each
  row an x interval, expanded with ``repeat_interleave`` ("generation order": Gaussian-major).
- Gaussians arrive sorted by depth and are processed in depth chunks. A chunk's pair keys are
  ``pixel * G + gaussian`` (int32, unique), so one radix sort orders them pixel-major with depth
  order inside each pixel and the key itself decodes to (pixel, gaussian).
- Transmittance is a segmented cumsum of log(1 - alpha) in float64 per pixel segment, carried
  across chunks; Gaussians, rows and pairs that only touch saturated pixels are dropped before
  sorting.
- Sums over pairs are sparse-matrix products (MKL CSR): pixel-major for the image, Gaussian-major
  (generation order) for the per-Gaussian gradients; the backward is analytic.
"""

from __future__ import annotations

import ctypes
import math
import warnings

import torch
from torch import Tensor

ALPHA_MIN = 1.0 / 255.0
ALPHA_MAX = 0.999
T_MIN = 1e-4
LOG_T_MIN = math.log(T_MIN)
EDGE_EPS = 1e-3  # pixels of slack when generating ellipse rows; alpha < 1/255 pairs are zeroed
CHUNK_PAIRS = 1_000_000  # target pairs per depth chunk: fewer chunks cost fixed overhead, more
# chunks cull more pairs behind saturated pixels (measured best at 1M for 100k @ 256²)
_INT32_MAX = 2**31 - 1


def tune_allocator() -> None:
    """Ask glibc to keep freed temporaries instead of returning them to the OS.

    Each render allocates and frees tens of MB of pair arrays; with glibc's defaults those go
    through mmap/munmap and page faults on every call (measured 1.25-1.7x slower). This sets
    M_MMAP_THRESHOLD to its 32 MiB maximum and M_TRIM_THRESHOLD to 1 GiB, process-wide. Called
    by the entry points (the CLI, the service's worker, the benches), not at import: it changes
    the whole process's allocator. Harmless no-op on non-glibc platforms.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 32 * 1024 * 1024)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 1024 * 1024 * 1024)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass


def _csr(crow: Tensor, col: Tensor, values: Tensor, shape: tuple[int, int]) -> Tensor:
    with warnings.catch_warnings():  # "Sparse CSR tensor support is in beta state"
        warnings.simplefilter("ignore")
        return torch.sparse_csr_tensor(crow, col, values, shape, check_invariants=False)


def _take(x: Tensor, idx: Tensor) -> Tensor:
    return x.index_select(0, idx)


def _offsets(counts: Tensor) -> Tensor:
    """Exclusive cumsum: start index of each run for run lengths ``counts`` [K] (int64)."""
    ends = torch.cumsum(counts, 0)
    return ends - counts


class _Chunk:
    """What the backward needs from one depth chunk."""

    __slots__ = ("gids", "feats", "crow_g", "pix_g", "alpha_g", "perm", "pix_s", "gid_s",
                 "alpha_s", "trans_s", "seg_pix", "seg_len", "seg_end")  # fmt: skip


def _row_extents(geom: Tensor, height: int, width: int) -> tuple[Tensor, ...]:
    """Ellipse bounds per Gaussian: r2, conic det, y0, y1 (rows, int64), x0, x1 (bbox)."""
    mx, my, a, b, c, op = geom.unbind(1)  # [M] each
    r2 = 2.0 * torch.log((op / ALPHA_MIN).clamp_min(1.0))  # sigma <= r2 / 2 <=> alpha >= 1/255
    det = (a * c - b * b).clamp_min(1e-30)
    hy = torch.sqrt(r2 * a / det)
    hx = torch.sqrt(r2 * c / det)
    y0 = torch.ceil(my - 0.5 - hy - EDGE_EPS).clamp(0, height).long()
    y1 = torch.floor(my - 0.5 + hy + EDGE_EPS).clamp(-1, height - 1).long()
    x0 = torch.ceil(mx - 0.5 - hx - EDGE_EPS).clamp(0, width).long()
    x1 = torch.floor(mx - 0.5 + hx + EDGE_EPS).clamp(-1, width - 1).long()
    return r2, det, y0, y1, x0, x1


def rasterize_forward(
    geom: Tensor,  # [M, 6] (mean x, mean y, conic a, b, c, opacity), sorted by depth
    feats: Tensor,  # [M, 4] (r, g, b, depth)
    cam: Tensor,  # [M] int64 camera index
    n_cams: int,
    height: int,
    width: int,
) -> tuple[Tensor, list[_Chunk]]:
    """Composite; returns sums [C*H*W, 5] (w r, w g, w b, w z, w) and state for the backward."""
    geom = geom.detach().contiguous()
    feats = feats.detach()
    M = geom.shape[0]
    n_pix = n_cams * height * width
    f64 = torch.float64
    out = torch.zeros(n_pix, 5, dtype=geom.dtype)
    log_t = torch.zeros(n_pix, dtype=f64)  # [P] log transmittance so far
    unsat = torch.ones(n_pix, dtype=torch.bool)
    chunks: list[_Chunk] = []
    if M == 0:
        return out, chunks
    feats5 = torch.cat([feats, torch.ones_like(feats[:, :1])], 1)  # [M, 5]
    r2, det, y0, y1, bx0, bx1 = _row_extents(geom, height, width)
    nrows = (y1 - y0 + 1).clamp_min(0)  # [M]
    ints = torch.stack([cam, y0, y1, bx0, bx1, nrows], 1)  # [M, 6] int64
    gtab = torch.cat([geom, r2[:, None], det[:, None]], 1)  # [M, 8]
    # Chunk boundaries: about CHUNK_PAIRS estimated pairs each, and keys must fit in int32.
    est = torch.cumsum(nrows * (bx1 - bx0 + 1).clamp_min(0), 0)
    max_g = max(1, min(_INT32_MAX // max(n_pix, 1), 1 << 20))
    bounds = [0]
    while bounds[-1] < M:
        g0 = bounds[-1]
        base = int(est[g0 - 1]) if g0 > 0 else 0
        g1 = int(torch.searchsorted(est, base + CHUNK_PAIRS, right=True))
        bounds.append(min(M, max(g1, g0 + 1), g0 + max_g))

    for g0, g1 in zip(bounds[:-1], bounds[1:], strict=True):
        sel = torch.arange(g0, g1)  # [G] Gaussians of this chunk
        if chunks:  # drop Gaussians whose bounding box holds no unsaturated pixel
            ii = torch.zeros(n_cams, height + 1, width + 1, dtype=torch.int32)
            ii[:, 1:, 1:] = unsat.view(n_cams, height, width).to(torch.int32).cumsum(1).cumsum(2)
            ii = ii.view(-1)
            cb, yy0, yy1, xx0, xx1, nr = ints[g0:g1].unbind(1)
            cb = cb * ((height + 1) * (width + 1))
            ya, yb = yy0.clamp_max(height) * (width + 1), (yy1 + 1) * (width + 1)
            xb = xx1 + 1
            n_unsat = (_take(ii, cb + yb + xb) - _take(ii, cb + ya + xb)
                       - _take(ii, cb + yb + xx0) + _take(ii, cb + ya + xx0))  # fmt: skip
            sel = sel[(n_unsat > 0) & (nr > 0)]
        else:
            sel = sel[nrows[g0:g1] > 0]
        G = sel.numel()
        if G == 0:
            continue
        # ---- rows: one per (Gaussian, pixel row) of its ellipse
        ints_s = _take(ints, sel)  # [G, 6]
        nr = ints_s[:, 5].contiguous()
        rg = torch.repeat_interleave(nr)  # [R] local Gaussian index
        R = rg.numel()
        ints_r = _take(torch.cat([ints_s[:, :2], _offsets(nr)[:, None]], 1), rg)  # [R, 3]
        yr = ints_r[:, 1] + (torch.arange(R) - ints_r[:, 2])  # [R] pixel row
        mx, my, a, b, c, op, r2r, detr = _take(_take(gtab, sel), rg).unbind(1)  # [R] each
        dy = yr.to(geom.dtype) + 0.5 - my
        half = torch.sqrt((a * r2r - detr * dy * dy).clamp_min(0)) / a
        xc = mx - b * dy / a - 0.5
        x0 = torch.ceil(xc - half - EDGE_EPS).clamp(0, width).long()
        x1 = torch.floor(xc + half + EDGE_EPS).clamp(-1, width - 1).long()
        cnt = (x1 - x0 + 1).clamp_min(0)  # [R]
        row_pix = (ints_r[:, 0] * height + yr) * width  # [R] flat index of (camera, row, 0)
        if chunks:  # drop rows whose x interval is all saturated
            rc = torch.zeros(n_pix // width, width + 1, dtype=torch.int32)
            rc[:, 1:] = unsat.view(-1, width).to(torch.int32).cumsum(1)
            rc = rc.view(-1)
            rbase = row_pix // width * (width + 1)
            hi, lo = rbase + (x1 + 1).clamp_min(0), rbase + x0.clamp_max(width)
            n_unsat = _take(rc, hi) - _take(rc, lo)
            cnt = cnt * (n_unsat > 0)
        # ---- pairs, generation order (Gaussian-major, then row, then x)
        pr = torch.repeat_interleave(cnt)  # [P] row of each pair
        P = pr.numel()
        if P == 0:
            continue
        row_int = torch.stack([row_pix + x0, _offsets(cnt), rg], 1)  # [R, 3]
        pix0, start, gl = _take(row_int, pr).unbind(1)
        k = torch.arange(P) - start  # [P] offset inside the row
        pix_g = pix0 + k  # [P] flat pixel index
        row_tab = torch.stack([x0.to(geom.dtype) + 0.5 - mx, b * dy, 0.5 * c * dy * dy,
                               0.5 * a, op], 1)  # fmt: skip
        dx0, bdy, cdy2, ha, opp = _take(row_tab, pr).unbind(1)  # [P] each
        dx = dx0 + k.to(geom.dtype)
        sigma = dx * (ha * dx + bdy) + cdy2
        alpha = (opp * torch.exp(-sigma)).clamp_max(ALPHA_MAX)
        alpha = alpha * ((alpha >= ALPHA_MIN) & (sigma >= 0))  # [P] generation order
        if chunks:
            alpha = alpha * _take(unsat, pix_g)
        # ---- pixel-major order with one radix sort on unique int32 keys
        key = pix_g * G + gl
        key = key.to(torch.int32) if n_pix * G <= _INT32_MAX else key
        skey, perm = torch.sort(key, stable=True)
        pix_s = torch.div(skey, G, rounding_mode="floor")  # [P] pixel, pixel-major order
        gid_s = skey - pix_s * G  # [P] local Gaussian index
        alpha_s = _take(alpha, perm)
        # ---- segmented transmittance, float64
        lg = torch.log1p(-alpha_s.to(f64))
        cs = torch.cumsum(lg, 0)
        new = torch.ones(P, dtype=torch.bool)
        new[1:] = pix_s[1:] != pix_s[:-1]
        starts = new.nonzero()[:, 0]  # [S] first pair of each pixel segment
        seg_end = torch.empty_like(starts)
        seg_end[:-1] = starts[1:] - 1
        seg_end[-1] = P - 1
        seg_len = seg_end - starts + 1
        seg_pix = _take(pix_s, starts).long()
        offset = _take(log_t, seg_pix) - (_take(cs, starts) - _take(lg, starts))  # [S]
        logt_incl = cs + torch.repeat_interleave(offset, seg_len, output_size=P)
        kept = logt_incl > LOG_T_MIN
        trans = torch.exp((logt_incl - lg).to(geom.dtype)) * kept  # [P]
        last = _take(logt_incl, seg_end)
        log_t.index_copy_(0, seg_pix, last)
        unsat.index_copy_(0, seg_pix, last > LOG_T_MIN)
        # ---- image sums: pixel-major CSR [n_pix, G] @ feats [G, 5]
        crow = torch.zeros(n_pix + 1, dtype=torch.int64)
        crow.index_copy_(0, seg_pix + 1, seg_len)
        crow = torch.cumsum(crow, 0)
        f5 = _take(feats5, sel)  # [G, 5]
        out += _csr(crow.to(gid_s.dtype), gid_s, alpha_s * trans, (n_pix, G)) @ f5

        ch = _Chunk()
        ch.gids, ch.feats = sel, f5
        ch.crow_g = torch.cat([torch.zeros(1, dtype=torch.int64), torch.cumsum(
            torch.zeros(G, dtype=torch.int64).index_add_(0, rg, cnt), 0)])  # fmt: skip
        ch.pix_g, ch.alpha_g, ch.perm = pix_g, alpha, perm
        ch.pix_s, ch.gid_s, ch.alpha_s, ch.trans_s = pix_s, gid_s, alpha_s, trans
        ch.seg_pix, ch.seg_len, ch.seg_end = seg_pix, seg_len, seg_end
        chunks.append(ch)
    return out, chunks


def _pixel_moments(n_cams: int, height: int, width: int) -> Tensor:
    """[C*H*W, 6] float64 (1, px, py, px², px py, py²) at pixel centres."""
    ys, xs = torch.meshgrid(
        torch.arange(height, dtype=torch.float64) + 0.5,
        torch.arange(width, dtype=torch.float64) + 0.5,
        indexing="ij",
    )
    xs, ys = xs.reshape(-1), ys.reshape(-1)
    q = torch.stack([torch.ones_like(xs), xs, ys, xs * xs, xs * ys, ys * ys], 1)
    return q.repeat(n_cams, 1)


def rasterize_backward(
    grad_out: Tensor,  # [C*H*W, 5]
    geom: Tensor,  # [M, 6]
    chunks: list[_Chunk],
    n_cams: int,
    height: int,
    width: int,
) -> tuple[Tensor, Tensor]:
    """Gradients w.r.t. geom [M, 6] and feats [M, 4]."""
    geom = geom.detach()
    n_pix = grad_out.shape[0]
    g_geom = torch.zeros_like(geom)
    g_feats = torch.zeros(geom.shape[0], 4, dtype=geom.dtype)
    if not chunks:
        return g_geom, g_feats
    grad_out = grad_out.contiguous().to(geom.dtype)
    g4 = grad_out[:, :4].contiguous()
    q = _pixel_moments(n_cams, height, width)
    behind = torch.zeros(n_pix, dtype=torch.float64)  # sum of w (g . f) of later chunks
    for ch in reversed(chunks):
        P, G = ch.pix_s.numel(), ch.gids.numel()
        # d out / d alpha_i = T_i f_i - (sum of w_k f_k behind i) / (1 - alpha_i)
        dot = (grad_out.index_select(0, ch.pix_s) * ch.feats.index_select(0, ch.gid_s)).sum(1)
        s = (ch.alpha_s * ch.trans_s * dot).to(torch.float64)
        cs = torch.cumsum(s, 0)
        cs_end = _take(cs, ch.seg_end)
        seg_total = cs_end + _take(behind, ch.seg_pix)  # [S]
        first = ch.seg_end - ch.seg_len + 1
        behind_i = torch.repeat_interleave(seg_total, ch.seg_len, output_size=P) - cs
        behind.index_add_(0, ch.seg_pix, cs_end - (_take(cs, first) - _take(s, first)))
        d_alpha = ch.trans_s * dot - behind_i.to(geom.dtype) / (1.0 - ch.alpha_s)
        # back to generation order (Gaussian-major), where per-Gaussian sums are CSR products
        both = torch.stack([d_alpha, ch.alpha_s * ch.trans_s], 1)
        gen = torch.empty_like(both).index_copy_(0, ch.perm, both)
        d_alpha_g, w_g = gen.unbind(1)
        a_g = ch.alpha_g
        live = (a_g > 0) & (a_g < ALPHA_MAX)
        d_sigma = torch.where(live, -d_alpha_g * a_g, 0.0)  # [P]
        pix_g = ch.pix_g
        crow = ch.crow_g
        g_feats.index_add_(0, ch.gids, _csr(crow, pix_g, w_g, (G, n_pix)) @ g4)
        mom = _csr(crow, pix_g, d_sigma.to(torch.float64), (G, n_pix)) @ q  # [G, 6]
        mx, my, a, b, c, op = _take(geom, ch.gids).to(torch.float64).unbind(1)
        s1, sx, sy, sxx, sxy, syy = mom.unbind(1)
        sdx = sx - mx * s1  # sum dsigma dx
        sdy = sy - my * s1
        sdxx = sxx - 2 * mx * sx + mx * mx * s1
        sdxy = sxy - mx * sy - my * sx + mx * my * s1
        sdyy = syy - 2 * my * sy + my * my * s1
        grads = torch.stack([
            -(a * sdx + b * sdy), -(b * sdx + c * sdy), 0.5 * sdxx, sdxy, 0.5 * sdyy, -s1 / op,
        ], 1)  # fmt: skip
        g_geom.index_add_(0, ch.gids, grads.to(geom.dtype))
    return g_geom, g_feats


class RasterizeSparse(torch.autograd.Function):
    """out [C*H*W, 5] = sums over depth-ordered pairs of w_i (r, g, b, z, 1)."""

    @staticmethod
    def forward(ctx, geom, feats, cam, n_cams, height, width):
        out, chunks = rasterize_forward(geom, feats, cam, n_cams, height, width)
        ctx.chunks = chunks
        ctx.dims = (n_cams, height, width)
        ctx.save_for_backward(geom)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        (geom,) = ctx.saved_tensors
        g_geom, g_feats = rasterize_backward(grad_out, geom, ctx.chunks, *ctx.dims)
        ctx.chunks = None
        return g_geom, g_feats, None, None, None, None


def rasterize(
    geom: Tensor,  # [M, 6] (mean x, mean y, conic a, b, c, opacity), sorted by depth
    feats: Tensor,  # [M, 4] (r, g, b, depth)
    cam: Tensor,  # [M] int64 camera of each entry
    n_cams: int,
    height: int,
    width: int,
) -> Tensor:
    """Differentiable sums [C*H*W, 5]: (sum w rgb, sum w z, alpha)."""
    return RasterizeSparse.apply(geom, feats, cam, n_cams, height, width)
