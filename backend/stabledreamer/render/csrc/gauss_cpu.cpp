// Native CPU projection and tile rasteriser for 3D Gaussians (float32), forward and backward.
//
// Plain C++ with a C ABI (called through ctypes on tensors' data pointers; no torch or Python
// headers), compiled when the package is installed (setup.py, render/native_build.py). Semantics mirror projection.py and raster_torch.py exactly (gsplat
// 1.5.3 "classic"): pixel centres at (x + 0.5, y + 0.5), alpha = min(0.999, o exp(-sigma)),
// pairs with alpha < 1/255 or sigma < 0 skipped, front-to-back compositing in depth order, and a
// pixel stops before the Gaussian that would bring its transmittance to <= 1e-4.
//
// Rasteriser (3DGS's layout, on CPU): per camera, visible Gaussians are radix-sorted by depth
// and binned into 16x16 pixel tiles by the pixel bounds of their alpha >= 1/255 ellipse (so each
// tile's list is in depth order). Each tile is one OpenMP task (dynamic schedule, torch's thread
// count). Inside a tile the loop is Gaussian-major and vectorised along tile rows (tile_kernel.h,
// built for x86-64 and AVX2 and picked at run time). The forward keeps, per pixel, the final
// transmittance and the last contributing entry; the backward walks each tile's list back to
// front like 3DGS's CUDA backward. Per-Gaussian gradients are summed in registers over a tile's
// pixels and written to one slot per tile entry; the slots are then summed per Gaussian in a
// fixed order, so gradients are bit-reproducible whatever the thread count (no atomics).

#if defined(_MSC_VER) && !defined(__clang__)
#error "gauss_cpu.cpp needs GCC or Clang (GCC vector extensions, __builtin_cpu_supports); MSVC cannot build it"
#endif

// Set by setup.py to native_build.source_digest(): raster_native refuses a library built from
// other sources than the ones installed next to it.
#ifndef SD_SOURCE_DIGEST
#define SD_SOURCE_DIGEST "unknown"
#endif

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <ctime>
#include <memory>
#include <vector>

namespace {

constexpr float ALPHA_MIN = 1.0f / 255.0f;
constexpr float ALPHA_MAX = 0.999f;
constexpr float T_MIN = 1e-4f;
constexpr float EDGE_EPS = 1e-3f;
constexpr float FAR_PLANE = 1e10f;
constexpr int TILE = 16;
constexpr int NPK = 10;  // packed Gaussian: mx, my, a, b, c, o, r, g, b, z
constexpr int NGRAD = 10;  // gradients in the same order

// ---------------------------------------------------------------- projection (projection.py)

struct ProjIn {
  int C, N, W, H;
  const float *means, *quats, *scales, *opac, *viewmats, *Ks;
  float eps2d, near_plane;
};

struct Camera {
  float Wr[9], t[3], fx, fy, cx, cy, lim_xp, lim_xn, lim_yp, lim_yn;
};

inline Camera camera(const ProjIn& p, int c) {
  Camera k;
  const float* V = p.viewmats + 16 * c;
  for (int i = 0; i < 3; ++i) {
    for (int j = 0; j < 3; ++j) k.Wr[3 * i + j] = V[4 * i + j];
    k.t[i] = V[4 * i + 3];
  }
  const float* K = p.Ks + 9 * c;
  k.fx = K[0];
  k.fy = K[4];
  k.cx = K[2];
  k.cy = K[5];
  k.lim_xp = (p.W - k.cx) / k.fx + 0.3f * (0.5f * p.W / k.fx);
  k.lim_xn = k.cx / k.fx + 0.3f * (0.5f * p.W / k.fx);
  k.lim_yp = (p.H - k.cy) / k.fy + 0.3f * (0.5f * p.H / k.fy);
  k.lim_yn = k.cy / k.fy + 0.3f * (0.5f * p.H / k.fy);
  return k;
}

// Normalised quaternion and M = R diag(s) (row-major 3x3).
inline void quat_scale(const float* q4, const float* s, float qn[4], float& qnorm, float R[9],
                       float M[9]) {
  float n = std::sqrt(q4[0] * q4[0] + q4[1] * q4[1] + q4[2] * q4[2] + q4[3] * q4[3]);
  qnorm = std::max(n, 1e-12f);
  for (int i = 0; i < 4; ++i) qn[i] = q4[i] / qnorm;
  float w = qn[0], x = qn[1], y = qn[2], z = qn[3];
  R[0] = 1 - 2 * (y * y + z * z);
  R[1] = 2 * (x * y - w * z);
  R[2] = 2 * (x * z + w * y);
  R[3] = 2 * (x * y + w * z);
  R[4] = 1 - 2 * (x * x + z * z);
  R[5] = 2 * (y * z - w * x);
  R[6] = 2 * (x * z - w * y);
  R[7] = 2 * (y * z + w * x);
  R[8] = 1 - 2 * (x * x + y * y);
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j) M[3 * i + j] = R[3 * i + j] * s[j];
}

struct ProjState {  // intermediate values of one (camera, Gaussian), shared by fwd and bwd
  float x, y, z, rz, tx, ty, j00, j02, j11, j12;
  bool in_front, tx_in, ty_in;
  float T0[3], T1[3], A0[3], A1[3], cxx, cxy, cyy, det, inv_det;
  bool ok;
};

inline void proj_state(const Camera& k, const float* mean, const float M[9], float eps2d,
                       float near_plane, ProjState& s) {
  float cam[3];
  for (int i = 0; i < 3; ++i)
    cam[i] = k.Wr[3 * i] * mean[0] + k.Wr[3 * i + 1] * mean[1] + k.Wr[3 * i + 2] * mean[2] + k.t[i];
  s.x = cam[0];
  s.y = cam[1];
  s.z = cam[2];
  s.in_front = (s.z > near_plane) && (s.z < FAR_PLANE);
  float zs = s.in_front ? s.z : 1.0f;
  s.rz = 1.0f / zs;
  float u = s.x * s.rz, v = s.y * s.rz;
  s.tx = std::min(std::max(u, -k.lim_xn), k.lim_xp);
  s.ty = std::min(std::max(v, -k.lim_yn), k.lim_yp);
  s.tx_in = (u > -k.lim_xn) && (u < k.lim_xp);
  s.ty_in = (v > -k.lim_yn) && (v < k.lim_yp);
  s.j00 = k.fx * s.rz;
  s.j02 = -k.fx * s.tx * s.rz;
  s.j11 = k.fy * s.rz;
  s.j12 = -k.fy * s.ty * s.rz;
  for (int j = 0; j < 3; ++j) {
    s.T0[j] = s.j00 * k.Wr[j] + s.j02 * k.Wr[6 + j];
    s.T1[j] = s.j11 * k.Wr[3 + j] + s.j12 * k.Wr[6 + j];
  }
  for (int j = 0; j < 3; ++j) {
    s.A0[j] = s.T0[0] * M[j] + s.T0[1] * M[3 + j] + s.T0[2] * M[6 + j];
    s.A1[j] = s.T1[0] * M[j] + s.T1[1] * M[3 + j] + s.T1[2] * M[6 + j];
  }
  s.cxx = s.A0[0] * s.A0[0] + s.A0[1] * s.A0[1] + s.A0[2] * s.A0[2] + eps2d;
  s.cxy = s.A0[0] * s.A1[0] + s.A0[1] * s.A1[1] + s.A0[2] * s.A1[2];
  s.cyy = s.A1[0] * s.A1[0] + s.A1[1] * s.A1[1] + s.A1[2] * s.A1[2] + eps2d;
  s.det = s.cxx * s.cyy - s.cxy * s.cxy;
  s.ok = s.in_front && (s.det > 0);
  s.inv_det = 1.0f / (s.ok ? s.det : 1.0f);
}

// ---------------------------------------------------------------- rasteriser state

struct Raster {
  int C = 0, N = 0, H = 0, W = 0, TX = 0, TY = 0;
  bool colors_shared = false;  // colours [N, 3] shared by all cameras (else [C, N, 3])
  std::vector<float> pk;  // [M, NPK] packed visible Gaussians, camera-major, depth order
  std::vector<int32_t> box;  // [M, 4] y0, y1, x0, x1 pixel bounds (inclusive)
  std::vector<int32_t> gid;  // [M] c * N + i
  std::vector<int32_t> inv;  // [C * N] pk row of (c, i), -1 when not rasterised
  std::vector<int64_t> cam_off;  // [C + 1] offsets into pk rows
  std::vector<int64_t> tile_off;  // [C * TY * TX + 1]
  std::vector<int32_t> ent;  // tile entries: pk row indices
  std::vector<int64_t> goff;  // [M + 1] first gradient slot of each Gaussian
  std::vector<int64_t> eslot;  // [E] gradient slot of each tile entry: Gaussian-major, tile order
  std::vector<float> t_final;  // [C*H*W] transmittance after the last contribution
  std::vector<int32_t> last;  // [C*H*W] last contributing entry of the tile list, -1 if none
};

// Stable LSD radix sort of idx by 32-bit keys (11-bit digits; constant digits skipped).
void radix_sort(std::vector<uint32_t>& keys, std::vector<int32_t>& idx) {
  const size_t n = keys.size();
  std::vector<uint32_t> k2(n);
  std::vector<int32_t> i2(n);
  for (int shift = 0; shift < 32; shift += 11) {
    size_t count[2049] = {0};
    for (size_t i = 0; i < n; ++i) ++count[((keys[i] >> shift) & 2047u) + 1];
    bool constant = false;
    for (int d = 1; d <= 2048; ++d)
      if (count[d] == n) constant = true;
    if (constant) continue;
    for (int d = 0; d < 2048; ++d) count[d + 1] += count[d];
    for (size_t i = 0; i < n; ++i) {
      size_t pos = count[(keys[i] >> shift) & 2047u]++;
      k2[pos] = keys[i];
      i2[pos] = idx[i];
    }
    keys.swap(k2);
    idx.swap(i2);
  }
}

// Threads for a loop over `work` cheap items: one below torch's grain size (32768), as for
// torch's own ops. Waking OpenMP workers costs more than such loops gain, and much more (up to
// tens of ms) when the machine is loaded.
inline int team(int64_t work, int nthreads) { return work >= 32768 ? std::max(nthreads, 1) : 1; }

// Adaptive thread count for the tile loops. On a machine with more runnable threads than cores
// (other jobs), OpenMP workers that are not scheduled in time stall a region at its closing
// barrier: measured here 10 ms with 1 thread vs 150 ms with 2 on a heavily shared machine. Each
// multi-threaded tile loop therefore compares the CPU time its threads spent with its wall time;
// when the region took longer than the same work on one thread, the next 64 calls run
// single-threaded, then the full team is tried again.
std::atomic<int> g_single_calls{0};

inline double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

inline double thread_cpu_s() {
  timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

inline int tile_threads(int nthreads) {
  if (nthreads <= 1) return 1;
  if (g_single_calls.load(std::memory_order_relaxed) > 0) {
    g_single_calls.fetch_sub(1, std::memory_order_relaxed);
    return 1;
  }
  return nthreads;
}

// body(i) for i in [0, n): a plain loop on one thread, else an OpenMP loop (static schedule).
// One-thread work never opens a parallel region: with libgomp, a region whose team size differs
// from the previous one waits for every pooled worker to dock, and a worker that is not scheduled
// (loaded machine) then stalls even "single-threaded" code by several ms.
template <class Body>
void par_for(int64_t n, int threads, Body body) {
  if (threads <= 1 || n <= 1) {
    for (int64_t i = 0; i < n; ++i) body(i);
    return;
  }
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t i = 0; i < n; ++i) body(i);
}

// Runs body(t) for t in [0, n) on `threads` OpenMP threads (dynamic schedule) and records
// whether the region was stalled (see g_single_calls).
template <class Body>
void tile_loop(int n, int threads, Body body) {
  if (threads <= 1) {
    for (int t = 0; t < n; ++t) body(t);
    return;
  }
  double cpu = 0.0;
  const double t0 = now_s();
#pragma omp parallel num_threads(threads) reduction(+ : cpu)
  {
    const double c0 = thread_cpu_s();
#pragma omp for schedule(dynamic, 1) nowait
    for (int t = 0; t < n; ++t) body(t);
    cpu += thread_cpu_s() - c0;
  }
  const double wall = now_s() - t0;
  if (wall > 2e-3 && cpu < wall) g_single_calls.store(64);
}

inline uint32_t float_key(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

}  // namespace

// ---------------------------------------------------------------- tile kernels, per ISA

namespace k_base {
#define SD_VL 4
#include "tile_kernel.h"
#undef SD_VL
}  // namespace k_base

#if defined(__x86_64__) || defined(__i386__)
#define SD_HAVE_AVX2_VARIANT 1
#pragma GCC push_options
#pragma GCC target("avx2")
namespace k_avx2 {
#define SD_VL 8
#include "tile_kernel.h"
#undef SD_VL
}  // namespace k_avx2
#pragma GCC pop_options
#endif

namespace {

// AVX2 with 8 lanes measured as fast as AVX-512 with 16 (or 8): the Gaussians are a few pixels
// wide, so only the 8-pixel halves of a tile row that a Gaussian's box touches are evaluated.
int detect_isa() {
#ifdef SD_HAVE_AVX2_VARIANT
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") ? 1 : 0;
#else
  return 0;
#endif
}

int g_isa = detect_isa();

void tile_forward(const Raster& r, int t, float* out, float* t_final, int32_t* last) {
#ifdef SD_HAVE_AVX2_VARIANT
  if (g_isa == 1) return k_avx2::tile_forward(r, t, out, t_final, last);
#endif
  k_base::tile_forward(r, t, out, t_final, last);
}

void tile_backward(const Raster& r, int t, const float* grad_out, float* slots) {
#ifdef SD_HAVE_AVX2_VARIANT
  if (g_isa == 1) return k_avx2::tile_backward(r, t, grad_out, slots);
#endif
  k_base::tile_backward(r, t, grad_out, slots);
}

}  // namespace

extern "C" {

int sd_abi_version() { return 1; }
const char* sd_source_digest() { return SD_SOURCE_DIGEST; }

// Which tile kernel runs: 0 baseline x86-64 (SSE2), 1 AVX2; set_isa caps it (for tests).
int sd_get_isa() { return g_isa; }
int sd_set_isa(int isa) {
  g_isa = std::min(std::max(isa, 0), detect_isa());
  return g_isa;
}

// Projection forward: means2d [C,N,2], conics [C,N,3], depths [C,N], radii [C,N,2] (int32).
void sd_project_fwd(int C, int N, const float* means, const float* quats, const float* scales,
                    const float* opac, const float* viewmats, const float* Ks, int W, int H,
                    float eps2d, float near_plane, float* means2d, float* conics, float* depths,
                    int32_t* radii, int nthreads) {
  ProjIn p{C, N, W, H, means, quats, scales, opac, viewmats, Ks, eps2d, near_plane};
  std::vector<Camera> cams(C);
  for (int c = 0; c < C; ++c) cams[c] = camera(p, c);
  par_for(N, team((int64_t)N * C, nthreads), [&](int64_t i_) {
    const int i = (int)i_;
    float qn[4], qnorm, R[9], M[9];
    quat_scale(quats + 4 * i, scales + 3 * i, qn, qnorm, R, M);
    const float op = opac[i];
    const float extend =
        std::min(std::sqrt(2.0f * std::log(std::max(op, ALPHA_MIN) / ALPHA_MIN)), 3.33f);
    for (int c = 0; c < C; ++c) {
      const Camera& k = cams[c];
      ProjState s;
      proj_state(k, means + 3 * i, M, eps2d, near_plane, s);
      const int64_t ci = (int64_t)c * N + i;
      conics[3 * ci] = s.cyy * s.inv_det;
      conics[3 * ci + 1] = -s.cxy * s.inv_det;
      conics[3 * ci + 2] = s.cxx * s.inv_det;
      const float m2x = k.fx * s.x * s.rz + k.cx, m2y = k.fy * s.y * s.rz + k.cy;
      means2d[2 * ci] = m2x;
      means2d[2 * ci + 1] = m2y;
      depths[ci] = s.z;
      const float rx = std::ceil(extend * std::sqrt(std::max(s.cxx, 0.0f)));
      const float ry = std::ceil(extend * std::sqrt(std::max(s.cyy, 0.0f)));
      bool ok = s.ok && (op >= ALPHA_MIN) && ((rx > 0) || (ry > 0));
      ok = ok && (m2x + rx > 0) && (m2x - rx < W) && (m2y + ry > 0) && (m2y - ry < H);
      radii[2 * ci] = ok ? (int32_t)rx : 0;
      radii[2 * ci + 1] = ok ? (int32_t)ry : 0;
    }
  });
}

// Projection backward: gradients to means [N,3], quats [N,4], scales [N,3] (written, not added).
void sd_project_bwd(int C, int N, const float* means, const float* quats, const float* scales,
                    const float* viewmats, const float* Ks, int W, int H, float eps2d,
                    float near_plane, const float* v_means2d, const float* v_conics,
                    const float* v_depths, float* v_means, float* v_quats, float* v_scales,
                    int nthreads) {
  ProjIn p{C, N, W, H, means, quats, scales, nullptr, viewmats, Ks, eps2d, near_plane};
  std::vector<Camera> cams(C);
  for (int c = 0; c < C; ++c) cams[c] = camera(p, c);
  par_for(N, team((int64_t)N * C, nthreads), [&](int64_t i_) {
    const int i = (int)i_;
    float qn[4], qnorm, R[9], M[9];
    quat_scale(quats + 4 * i, scales + 3 * i, qn, qnorm, R, M);
    float vM[9] = {0}, vp[3] = {0};
    for (int c = 0; c < C; ++c) {
      const int64_t ci = (int64_t)c * N + i;
      const float* vm2 = v_means2d + 2 * ci;
      const float* vc = v_conics + 3 * ci;
      const float vz_in = v_depths[ci];
      if (vm2[0] == 0 && vm2[1] == 0 && vc[0] == 0 && vc[1] == 0 && vc[2] == 0 && vz_in == 0)
        continue;
      const Camera& k = cams[c];
      ProjState s;
      proj_state(k, means + 3 * i, M, eps2d, near_plane, s);
      // conics = (cyy, -cxy, cxx) * inv_det, inv_det = 1 / det (only when ok)
      float v_cxx = vc[2] * s.inv_det, v_cyy = vc[0] * s.inv_det, v_cxy = -vc[1] * s.inv_det;
      if (s.ok) {
        float v_inv = vc[0] * s.cyy - vc[1] * s.cxy + vc[2] * s.cxx;
        float v_det = -s.inv_det * s.inv_det * v_inv;
        v_cxx += v_det * s.cyy;
        v_cyy += v_det * s.cxx;
        v_cxy += -2.0f * v_det * s.cxy;
      }
      float vA0[3], vA1[3];
      for (int j = 0; j < 3; ++j) {
        vA0[j] = 2.0f * v_cxx * s.A0[j] + v_cxy * s.A1[j];
        vA1[j] = 2.0f * v_cyy * s.A1[j] + v_cxy * s.A0[j];
      }
      float vT0[3], vT1[3];
      for (int r = 0; r < 3; ++r) {
        vT0[r] = vA0[0] * M[3 * r] + vA0[1] * M[3 * r + 1] + vA0[2] * M[3 * r + 2];
        vT1[r] = vA1[0] * M[3 * r] + vA1[1] * M[3 * r + 1] + vA1[2] * M[3 * r + 2];
        for (int j = 0; j < 3; ++j) vM[3 * r + j] += vA0[j] * s.T0[r] + vA1[j] * s.T1[r];
      }
      float v_j00 = 0, v_j02 = 0, v_j11 = 0, v_j12 = 0;
      for (int j = 0; j < 3; ++j) {
        v_j00 += vT0[j] * k.Wr[j];
        v_j02 += vT0[j] * k.Wr[6 + j];
        v_j11 += vT1[j] * k.Wr[3 + j];
        v_j12 += vT1[j] * k.Wr[6 + j];
      }
      float v_rz = k.fx * v_j00 - k.fx * s.tx * v_j02 + k.fy * v_j11 - k.fy * s.ty * v_j12;
      float v_tx = -k.fx * s.rz * v_j02, v_ty = -k.fy * s.rz * v_j12;
      float v_x = 0, v_y = 0, v_z = vz_in;
      if (s.tx_in) {
        v_x += v_tx * s.rz;
        v_rz += v_tx * s.x;
      }
      if (s.ty_in) {
        v_y += v_ty * s.rz;
        v_rz += v_ty * s.y;
      }
      v_x += k.fx * s.rz * vm2[0];
      v_rz += k.fx * s.x * vm2[0];
      v_y += k.fy * s.rz * vm2[1];
      v_rz += k.fy * s.y * vm2[1];
      if (s.in_front) v_z += -s.rz * s.rz * v_rz;
      for (int j = 0; j < 3; ++j)
        vp[j] += k.Wr[j] * v_x + k.Wr[3 + j] * v_y + k.Wr[6 + j] * v_z;
    }
    for (int j = 0; j < 3; ++j) v_means[3 * i + j] = vp[j];
    // M = R diag(s)
    float vR[9];
    const float* sc = scales + 3 * i;
    for (int j = 0; j < 3; ++j) {
      v_scales[3 * i + j] = vM[j] * R[j] + vM[3 + j] * R[3 + j] + vM[6 + j] * R[6 + j];
      for (int r = 0; r < 3; ++r) vR[3 * r + j] = vM[3 * r + j] * sc[j];
    }
    const float w = qn[0], x = qn[1], y = qn[2], z = qn[3];
    float vq[4];
    vq[0] = 2 * (-z * vR[1] + y * vR[2] + z * vR[3] - x * vR[5] - y * vR[6] + x * vR[7]);
    vq[1] = 2 * (y * vR[1] + z * vR[2] + y * vR[3] - 2 * x * vR[4] - w * vR[5] + z * vR[6] +
                 w * vR[7] - 2 * x * vR[8]);
    vq[2] = 2 * (-2 * y * vR[0] + x * vR[1] + w * vR[2] + x * vR[3] + z * vR[5] - w * vR[6] +
                 z * vR[7] - 2 * y * vR[8]);
    vq[3] = 2 * (-2 * z * vR[0] - w * vR[1] + x * vR[2] + w * vR[3] - 2 * z * vR[4] +
                 y * vR[5] + x * vR[6] + y * vR[7]);
    // qn = q / max(|q|, 1e-12)
    float dot = vq[0] * qn[0] + vq[1] * qn[1] + vq[2] * qn[2] + vq[3] * qn[3];
    const float* q4 = quats + 4 * i;
    float n = std::sqrt(q4[0] * q4[0] + q4[1] * q4[1] + q4[2] * q4[2] + q4[3] * q4[3]);
    for (int j = 0; j < 4; ++j)
      v_quats[4 * i + j] = n > 1e-12f ? (vq[j] - qn[j] * dot) / qnorm : vq[j] / qnorm;
  });
}

// Rasteriser forward. colors: [N, 3] if colors_shared else [C, N, 3]. Writes out [C*H*W, 5]
// (sum w r, w g, w b, w z, w) and returns a state handle for the backward (sd_raster_free).
void* sd_raster_fwd(int C, int N, int H, int W, const float* means2d, const float* conics,
                    const float* opac, const float* colors, int colors_shared, const float* depths,
                    const int32_t* radii, float* out, int nthreads) {
  Raster* st = new Raster();
  Raster& r = *st;
  r.C = C;
  r.N = N;
  r.H = H;
  r.W = W;
  r.TX = (W + TILE - 1) / TILE;
  r.TY = (H + TILE - 1) / TILE;
  r.colors_shared = colors_shared != 0;
  const int ntile_cam = r.TX * r.TY;
  const int64_t CN = (int64_t)C * N;
  const int nt_bin = team(CN, nthreads);
  // ---- pixel bounds of each visible Gaussian's alpha >= 1/255 ellipse, in input order
  std::vector<int32_t> box_all(CN * 4);
  std::vector<uint8_t> vis(CN);
  par_for(CN, nt_bin, [&](int64_t ci_) {
    const int64_t ci = (int64_t)ci_;
    vis[ci] = 0;
    if (radii[2 * ci] <= 0 && radii[2 * ci + 1] <= 0) return;
    const int i = (int)(ci % N);
    const float mx = means2d[2 * ci], my = means2d[2 * ci + 1];
    const float a = conics[3 * ci], b = conics[3 * ci + 1], c = conics[3 * ci + 2];
    const float r2 = 2.0f * std::log(std::max(opac[i] / ALPHA_MIN, 1.0f));
    const float det = std::max(a * c - b * b, 1e-30f);
    const float hy = std::sqrt(r2 * a / det), hx = std::sqrt(r2 * c / det);
    const float y0 = std::max(std::ceil(my - 0.5f - hy - EDGE_EPS), 0.0f);
    const float y1 = std::min(std::floor(my - 0.5f + hy + EDGE_EPS), (float)(H - 1));
    const float x0 = std::max(std::ceil(mx - 0.5f - hx - EDGE_EPS), 0.0f);
    const float x1 = std::min(std::floor(mx - 0.5f + hx + EDGE_EPS), (float)(W - 1));
    // compared as floats before any int conversion: NaN or infinite bounds fail here
    if (!(y0 <= y1 && x0 <= x1)) return;
    int32_t* bx = &box_all[4 * ci];
    bx[0] = (int32_t)y0;
    bx[1] = (int32_t)y1;
    bx[2] = (int32_t)x0;
    bx[3] = (int32_t)x1;
    vis[ci] = 1;
  });
  // ---- per camera: those Gaussians sorted by depth (stable, so ties keep index order)
  std::vector<std::vector<int32_t>> order(C);
  par_for(C, nt_bin, [&](int64_t c_) {
    const int c = (int)c_;
    std::vector<uint32_t> keys;
    std::vector<int32_t>& idx = order[c];
    keys.reserve(N);
    idx.reserve(N);
    for (int i = 0; i < N; ++i) {
      const int64_t ci = (int64_t)c * N + i;
      if (vis[ci]) {
        idx.push_back(i);
        keys.push_back(float_key(depths[ci]));
      }
    }
    radix_sort(keys, idx);
  });
  r.cam_off.assign(C + 1, 0);
  for (int c = 0; c < C; ++c) r.cam_off[c + 1] = r.cam_off[c] + (int64_t)order[c].size();
  const int64_t M = r.cam_off[C];
  r.pk.resize(M * NPK);
  r.box.resize(M * 4);
  r.gid.resize(M);
  // ---- pack them in depth order
  r.inv.assign(CN, -1);
  par_for(M, nt_bin, [&](int64_t m_) {
    const int64_t m = (int64_t)m_;
    const int c = (int)(std::upper_bound(r.cam_off.begin(), r.cam_off.end(), m) -
                        r.cam_off.begin()) - 1;
    const int i = order[c][m - r.cam_off[c]];
    const int64_t ci = (int64_t)c * N + i;
    float* g = &r.pk[m * NPK];
    g[0] = means2d[2 * ci];
    g[1] = means2d[2 * ci + 1];
    g[2] = conics[3 * ci];
    g[3] = conics[3 * ci + 1];
    g[4] = conics[3 * ci + 2];
    g[5] = opac[i];
    const float* col = colors + 3 * (r.colors_shared ? (int64_t)i : ci);
    g[6] = col[0];
    g[7] = col[1];
    g[8] = col[2];
    g[9] = depths[ci];
    r.gid[m] = (int32_t)ci;
    r.inv[ci] = (int32_t)m;
    for (int j = 0; j < 4; ++j) r.box[4 * m + j] = box_all[4 * ci + j];
  });
  // ---- tile lists: count overlaps per thread (contiguous ranges of m), offsets, fill
  const int64_t ntl = (int64_t)C * ntile_cam;
  std::vector<int64_t> tcount((size_t)nt_bin * ntl, 0);
  auto tile_range = [&](int64_t m, int64_t& base, int& ty0, int& ty1, int& tx0, int& tx1) {
    const int32_t* bx = &r.box[4 * m];
    base = (int64_t)(r.gid[m] / N) * ntile_cam;
    ty0 = bx[0] / TILE;
    ty1 = bx[1] / TILE;
    tx0 = bx[2] / TILE;
    tx1 = bx[3] / TILE;
  };
  par_for(nt_bin, nt_bin, [&](int64_t th_) {
    const int th = (int)th_;  // chunk th: a contiguous range of m
    const int nth = nt_bin;
    const int64_t m0 = M * th / nth, m1 = M * (th + 1) / nth;
    int64_t* cnt = &tcount[(size_t)th * ntl];
    for (int64_t m = m0; m < m1; ++m) {
      int64_t base;
      int ty0, ty1, tx0, tx1;
      tile_range(m, base, ty0, ty1, tx0, tx1);
      for (int ty = ty0; ty <= ty1; ++ty)
        for (int tx = tx0; tx <= tx1; ++tx) ++cnt[base + ty * r.TX + tx];
    }
  });
  // per Gaussian: its entries' gradient slots (contiguous), for a fixed-order reduction
  r.goff.assign(M + 1, 0);
  for (int64_t m = 0; m < M; ++m) {
    int64_t base;
    int ty0, ty1, tx0, tx1;
    tile_range(m, base, ty0, ty1, tx0, tx1);
    r.goff[m + 1] = r.goff[m] + (int64_t)(ty1 - ty0 + 1) * (tx1 - tx0 + 1);
  }
  r.eslot.resize(r.goff[M]);
  // exclusive offsets ordered (tile, thread): each tile's list stays in depth order
  r.tile_off.assign(ntl + 1, 0);
  {
    int64_t run = 0;
    for (int64_t t = 0; t < ntl; ++t) {
      r.tile_off[t] = run;
      for (int th = 0; th < nt_bin; ++th) {
        const int64_t n = tcount[(size_t)th * ntl + t];
        tcount[(size_t)th * ntl + t] = run;
        run += n;
      }
    }
    r.tile_off[ntl] = run;
  }
  r.ent.resize(r.tile_off[ntl]);
  par_for(nt_bin, nt_bin, [&](int64_t th_) {
    const int th = (int)th_;  // chunk th: a contiguous range of m
    const int nth = nt_bin;
    const int64_t m0 = M * th / nth, m1 = M * (th + 1) / nth;
    int64_t* fill = &tcount[(size_t)th * ntl];
    for (int64_t m = m0; m < m1; ++m) {
      int64_t base;
      int ty0, ty1, tx0, tx1;
      tile_range(m, base, ty0, ty1, tx0, tx1);
      int64_t k = r.goff[m];
      for (int ty = ty0; ty <= ty1; ++ty)
        for (int tx = tx0; tx <= tx1; ++tx) {
          const int64_t pos = fill[base + ty * r.TX + tx]++;
          r.ent[pos] = (int32_t)m;
          r.eslot[pos] = k++;
        }
    }
  });
  const int64_t npix = (int64_t)C * H * W;
  r.t_final.resize(npix);
  r.last.resize(npix);
  // ---- composite, one tile per task
  const int ntiles = C * ntile_cam;
  tile_loop(ntiles, tile_threads(nthreads),
            [&](int t) { tile_forward(r, t, out, r.t_final.data(), r.last.data()); });
  return st;
}

void sd_raster_free(void* handle) { delete static_cast<Raster*>(handle); }

int64_t sd_raster_n_entries(void* handle) {
  return (int64_t) static_cast<Raster*>(handle)->ent.size();
}

// Rasteriser backward: grad_out [C*H*W, 5] -> v_means2d [C,N,2], v_conics [C,N,3],
// v_opac [N], v_colors ([N,3] if shared else [C,N,3]), v_depths [C,N] (all written).
void sd_raster_bwd(void* handle, const float* grad_out, float* v_means2d, float* v_conics,
                   float* v_opac, float* v_colors, float* v_depths, int nthreads) {
  const Raster& r = *static_cast<Raster*>(handle);
  const int C = r.C, N = r.N;
  const int ntile_cam = r.TX * r.TY, ntiles = C * ntile_cam;
  // One gradient slot per tile entry (every slot is written by its tile), Gaussian-major, summed
  // per Gaussian in a fixed order afterwards: deterministic whatever the threads and schedule.
  std::unique_ptr<float[]> slots(new float[r.ent.size() * NGRAD + 1]);
  tile_loop(ntiles, tile_threads(nthreads),
            [&](int t) { tile_backward(r, t, grad_out, slots.get()); });
  // ---- sum each Gaussian's slots (fixed order) into the (camera, Gaussian) layout
  par_for(N, team((int64_t)N * C, nthreads), [&](int64_t i_) {
    const int i = (int)i_;
    float vo = 0.0f, vc[3] = {0.0f, 0.0f, 0.0f};
    for (int c = 0; c < C; ++c) {
      const int64_t ci = (int64_t)c * N + i;
      const int64_t m = r.inv[ci];
      float v[NGRAD] = {0};
      if (m >= 0)
        for (int64_t k = r.goff[m]; k < r.goff[m + 1]; ++k) {
          const float* sl = &slots[k * NGRAD];
          for (int j = 0; j < NGRAD; ++j) v[j] += sl[j];
        }
      v_means2d[2 * ci] = v[0];
      v_means2d[2 * ci + 1] = v[1];
      v_conics[3 * ci] = v[2];
      v_conics[3 * ci + 1] = v[3];
      v_conics[3 * ci + 2] = v[4];
      v_depths[ci] = v[9];
      vo += v[5];
      if (r.colors_shared) {
        for (int j = 0; j < 3; ++j) vc[j] += v[6 + j];
      } else {
        for (int j = 0; j < 3; ++j) v_colors[3 * ci + j] = v[6 + j];
      }
    }
    v_opac[i] = vo;
    if (r.colors_shared)
      for (int j = 0; j < 3; ++j) v_colors[3 * i + j] = vc[j];
  });
}

}  // extern "C"
