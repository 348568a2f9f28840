// Per-tile compositing kernels, included several times by gauss_cpu.cpp, each time inside its own
// namespace, under its own "#pragma GCC target" and with its own native vector width SD_VL
// (x86-64 baseline SSE2: 4 lanes, AVX2: 8), and picked at run time by CPU features.
// Self-contained on purpose: no std:: templates in here, so no COMDAT instantiation compiled for
// one target can leak into another.
//
// A tile row (16 pixels) is NV = 16 / SD_VL native vectors (GCC vector extensions): for each
// Gaussian of the tile's depth-ordered list, each of its pixel rows inside the tile is evaluated
// for the vectors its bounding box touches, masked by the box, the image edge and finished
// pixels. Every lane runs the same IEEE operations in every variant and in forward and backward
// (compiled with -ffp-contract=off), so alphas are bit-identical everywhere; the forward records
// per pixel the final transmittance and the last contributing list entry, which fix the
// backward's pairs.
//
// Needs from the includer: SD_VL, TILE (16), NPK, NGRAD, ALPHA_MIN, ALPHA_MAX, T_MIN, Raster.

constexpr int VL = SD_VL;
constexpr int NV = TILE / VL;  // vectors per tile row
typedef float vf __attribute__((vector_size(4 * SD_VL)));
typedef int32_t vi __attribute__((vector_size(4 * SD_VL)));
typedef float vf4 __attribute__((vector_size(16)));

#define SD_INLINE static inline __attribute__((always_inline))

SD_INLINE vf splat(float x) { return vf{} + x; }
SD_INLINE vi splati(int32_t x) { return vi{} + x; }
SD_INLINE vf sel(vi m, vf a, vf b) { return m ? a : b; }
SD_INLINE int imin(int a, int b) { return a < b ? a : b; }
SD_INLINE int imax(int a, int b) { return a > b ? a : b; }

SD_INLINE uint64_t or_bits(vi m) {
  uint64_t u[VL / 2];
  __builtin_memcpy(u, &m, 4 * VL);
  uint64_t r = 0;
  for (int k = 0; k < VL / 2; ++k) r |= u[k];
  return r;
}
SD_INLINE uint64_t and_bits(vi m) {
  uint64_t u[VL / 2];
  __builtin_memcpy(u, &m, 4 * VL);
  uint64_t r = ~uint64_t(0);
  for (int k = 0; k < VL / 2; ++k) r &= u[k];
  return r;
}
SD_INLINE bool any(vi m) { return or_bits(m) != 0; }
SD_INLINE bool all(vi m) { return and_bits(m) == ~uint64_t(0); }

SD_INLINE float hsum(vf v) {
#if SD_VL == 16
  typedef float vf8 __attribute__((vector_size(32)));
  vf8 s8 = __builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7) +
           __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15);
  vf4 s4 = __builtin_shufflevector(s8, s8, 0, 1, 2, 3) + __builtin_shufflevector(s8, s8, 4, 5, 6, 7);
#elif SD_VL == 8
  vf4 s4 = __builtin_shufflevector(v, v, 0, 1, 2, 3) + __builtin_shufflevector(v, v, 4, 5, 6, 7);
#else
  vf4 s4 = v;
#endif
  return (s4[0] + s4[2]) + (s4[1] + s4[3]);
}

// exp(x) for x <= 0 (Cephes expf polynomial, ~1 ulp); x clamped to [-87, 0].
SD_INLINE vf vexp_neg(vf x) {
  x = x < -87.0f ? splat(-87.0f) : x;
  x = x > 0.0f ? splat(0.0f) : x;
  const vf magic = splat(12582912.0f);  // 1.5 * 2^23: round to nearest integer
  vf n = (x * 1.44269504088896341f + magic) - magic;
  vf r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  vf p = splat(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * (r * r) + r + 1.0f;
  vi e = (__builtin_convertvector(n, vi) + 127) << 23;
  return p * (vf)e;
}

struct RowEval {
  vf alpha, dx;
  vi valid;  // alpha >= 1/255, sigma >= 0, inside the box and the image, pixel not finished
};

// alpha of one Gaussian for VL pixels of a tile row (pixel centres px, row offset dy).
SD_INLINE RowEval eval_row(const float* g, float dy, vf px, vi inside) {
  RowEval e;
  e.dx = px - g[0];
  const float cdy2 = g[4] * dy * dy, bdy = g[3] * dy;
  vf sigma = 0.5f * (g[2] * e.dx * e.dx + cdy2) + bdy * e.dx;
  vf a = g[5] * vexp_neg(-sigma);
  e.alpha = a > ALPHA_MAX ? splat(ALPHA_MAX) : a;
  e.valid = inside & (sigma >= 0.0f) & (e.alpha >= ALPHA_MIN);
  return e;
}

struct TileGeom {
  int c, x0t, y0t, tw, th;
  vf px[NV];  // pixel centre x of each lane
  vi lane[NV];  // lane index within the tile row, 0..15
};

SD_INLINE void tile_geom(const Raster& r, int t, TileGeom& tg) {
  const int ntile_cam = r.TX * r.TY;
  tg.c = t / ntile_cam;
  const int tyi = (t % ntile_cam) / r.TX, txi = t % r.TX;
  tg.x0t = txi * TILE;
  tg.y0t = tyi * TILE;
  tg.tw = imin(TILE, r.W - tg.x0t);
  tg.th = imin(TILE, r.H - tg.y0t);
  for (int h = 0; h < NV; ++h)
    for (int l = 0; l < VL; ++l) {
      tg.lane[h][l] = h * VL + l;
      tg.px[h][l] = (float)(tg.x0t + h * VL + l) + 0.5f;
    }
}

void tile_forward(const Raster& r, int t, float* out, float* t_final, int32_t* last) {
  TileGeom tg;
  tile_geom(r, t, tg);
  vf T[TILE][NV], acc[TILE][NV][5];
  vi done[TILE][NV], lastv[TILE][NV];
  const uint32_t full = (1u << tg.th) - 1u;
  uint32_t row_full = 0;
  for (int ly = 0; ly < TILE; ++ly)
    for (int h = 0; h < NV; ++h) {
      T[ly][h] = splat(1.0f);
      done[ly][h] = tg.lane[h] >= tg.tw;  // lanes outside the image count as finished
      lastv[ly][h] = splati(-1);
      for (int k = 0; k < 5; ++k) acc[ly][h][k] = vf{};
    }
  const int64_t e0 = r.tile_off[t];
  for (int64_t e = e0; e < r.tile_off[t + 1] && row_full != full; ++e) {
    const int64_t m = r.ent[e];
    const float* g = &r.pk[m * NPK];
    const int32_t* bx = &r.box[4 * m];
    vi inside[NV];
    for (int h = 0; h < NV; ++h)
      inside[h] = (tg.lane[h] >= bx[2] - tg.x0t) & (tg.lane[h] <= bx[3] - tg.x0t);
    const int ya = imax(bx[0], tg.y0t), yb = imin(bx[1], tg.y0t + tg.th - 1);
    // vectors of the row that the box touches (the box overlaps this tile)
    const int hlo = imax(bx[2] - tg.x0t, 0) / VL, hhi = imin(bx[3] - tg.x0t, TILE - 1) / VL;
    const float f0 = g[6], f1 = g[7], f2 = g[8], f3 = g[9];
    const vi ei = splati((int32_t)(e - e0));
    vi stops{};
    for (int y = ya; y <= yb; ++y) {
      const int ly = y - tg.y0t;
      if ((row_full >> ly) & 1u) continue;
      const float dy = (float)y + 0.5f - g[1];
      for (int h = hlo; h <= hhi; ++h) {
        const RowEval ev = eval_row(g, dy, tg.px[h], inside[h] & ~done[ly][h]);
        const vf Tp = T[ly][h];
        const vf nT = Tp * (1.0f - ev.alpha);
        const vi stop = ev.valid & (nT <= T_MIN);
        const vi live = ev.valid & ~stop;
        const vf w = sel(live, ev.alpha * Tp, splat(0.0f));
        T[ly][h] = sel(live, nT, Tp);
        lastv[ly][h] = live ? ei : lastv[ly][h];
        vf* a = acc[ly][h];
        a[0] += w * f0;
        a[1] += w * f1;
        a[2] += w * f2;
        a[3] += w * f3;
        a[4] += w;
        done[ly][h] |= stop;
        stops |= stop;
      }
    }
    if (any(stops))
      for (int y = ya; y <= yb; ++y) {
        const int ly = y - tg.y0t;
        uint64_t bits = ~uint64_t(0);
        for (int h = 0; h < NV; ++h) bits &= and_bits(done[ly][h]);
        if (bits == ~uint64_t(0)) row_full |= 1u << ly;
      }
  }
  for (int ly = 0; ly < tg.th; ++ly) {
    const int64_t pix0 = ((int64_t)tg.c * r.H + tg.y0t + ly) * r.W + tg.x0t;
    for (int lx = 0; lx < tg.tw; ++lx) {
      const int h = lx / VL, l = lx % VL;
      for (int k = 0; k < 5; ++k) out[5 * (pix0 + lx) + k] = acc[ly][h][k][l];
      t_final[pix0 + lx] = T[ly][h][l];
      last[pix0 + lx] = lastv[ly][h][l];
    }
  }
}

// Gradients of one tile into its entries' slots [E, NGRAD] (at r.eslot[e], all written): per Gaussian
// (mean x, mean y, conic a, b, c, opacity, r, g, b, depth). Back to front like 3DGS: per pixel
// the transmittance is recovered from the final one, T_i = T_{i+1} / (1 - alpha_i), and
// R = sum_k g_k (sum of w f behind i) / T_{i+1} is carried as R <- alpha dot + (1 - alpha) R, so
// d out / d alpha_i = T_i (g . f_i - R) without cancellation.
void tile_backward(const Raster& r, int t, const float* grad_out, float* slots) {
  TileGeom tg;
  tile_geom(r, t, tg);
  vf T[TILE][NV], R[TILE][NV], G[TILE][NV][5];
  vi lastv[TILE][NV];
  int row_last[TILE];
  int tile_last = -1;
  for (int ly = 0; ly < TILE; ++ly) {
    row_last[ly] = -1;
    for (int h = 0; h < NV; ++h) {
      T[ly][h] = splat(1.0f);
      R[ly][h] = vf{};
      lastv[ly][h] = splati(-1);
      for (int k = 0; k < 5; ++k) G[ly][h][k] = vf{};
    }
    if (ly >= tg.th) continue;
    const int64_t pix0 = ((int64_t)tg.c * r.H + tg.y0t + ly) * r.W + tg.x0t;
    for (int lx = 0; lx < tg.tw; ++lx) {
      const int h = lx / VL, l = lx % VL;
      for (int k = 0; k < 5; ++k) G[ly][h][k][l] = grad_out[5 * (pix0 + lx) + k];
      T[ly][h][l] = r.t_final[pix0 + lx];
      const int32_t li = r.last[pix0 + lx];
      lastv[ly][h][l] = li;
      row_last[ly] = imax(row_last[ly], li);
    }
    tile_last = imax(tile_last, row_last[ly]);
  }
  const int64_t e0 = r.tile_off[t];
  for (int64_t e = e0 + tile_last + 1; e < r.tile_off[t + 1]; ++e)  // behind every pixel's last
    for (int k = 0; k < NGRAD; ++k) slots[r.eslot[e] * NGRAD + k] = 0.0f;
  for (int64_t e = e0 + tile_last; e >= e0; --e) {
    const int64_t m = r.ent[e];
    const float* g = &r.pk[m * NPK];
    const int32_t* bx = &r.box[4 * m];
    const int32_t eidx = (int32_t)(e - e0);
    const vi ei = splati(eidx);
    vi inside[NV];
    for (int h = 0; h < NV; ++h)
      inside[h] = (tg.lane[h] >= bx[2] - tg.x0t) & (tg.lane[h] <= bx[3] - tg.x0t);
    const int ya = imax(bx[0], tg.y0t), yb = imin(bx[1], tg.y0t + tg.th - 1);
    const int hlo = imax(bx[2] - tg.x0t, 0) / VL, hhi = imin(bx[3] - tg.x0t, TILE - 1) / VL;
    const float f0 = g[6], f1 = g[7], f2 = g[8], f3 = g[9];
    vf s1{}, sx{}, sy{}, sxx{}, sxy{}, syy{}, vr{}, vg{}, vbl{}, vz{};
    bool touched = false;
    for (int y = ya; y <= yb; ++y) {
      const int ly = y - tg.y0t;
      if (eidx > row_last[ly]) continue;
      touched = true;
      const float dy = (float)y + 0.5f - g[1];
      for (int h = hlo; h <= hhi; ++h) {
        const RowEval ev = eval_row(g, dy, tg.px[h], inside[h] & (lastv[ly][h] >= ei));
        const vi live = ev.valid;
        const vf one_minus = 1.0f - ev.alpha;
        const vf Tp = sel(live, T[ly][h] / one_minus, T[ly][h]);
        T[ly][h] = Tp;
        const vf w = sel(live, ev.alpha * Tp, splat(0.0f));
        const vf* gk = G[ly][h];
        const vf dot = gk[0] * f0 + gk[1] * f1 + gk[2] * f2 + gk[3] * f3 + gk[4];
        const vf d_alpha = Tp * (dot - R[ly][h]);
        R[ly][h] = sel(live, ev.alpha * dot + one_minus * R[ly][h], R[ly][h]);
        vr += w * gk[0];
        vg += w * gk[1];
        vbl += w * gk[2];
        vz += w * gk[3];
        const vi grad_live = live & (ev.alpha < ALPHA_MAX);  // zero where alpha is clamped
        const vf d_sigma = sel(grad_live, -d_alpha * ev.alpha, splat(0.0f));
        const vf sdx = d_sigma * ev.dx;
        s1 += d_sigma;
        sx += sdx;
        sxx += sdx * ev.dx;
        sy += d_sigma * dy;
        sxy += sdx * dy;
        syy += d_sigma * (dy * dy);
      }
    }
    float* v = slots + r.eslot[e] * NGRAD;
    if (!touched) {
      for (int k = 0; k < NGRAD; ++k) v[k] = 0.0f;
      continue;
    }
    const float S1 = hsum(s1), SX = hsum(sx), SY = hsum(sy);
    const float a = g[2], b = g[3], c = g[4];
    v[0] = -(a * SX + b * SY);
    v[1] = -(b * SX + c * SY);
    v[2] = 0.5f * hsum(sxx);
    v[3] = hsum(sxy);
    v[4] = 0.5f * hsum(syy);
    v[5] = -S1 / g[5];
    v[6] = hsum(vr);
    v[7] = hsum(vg);
    v[8] = hsum(vbl);
    v[9] = hsum(vz);
  }
}

#undef SD_INLINE
