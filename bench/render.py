"""Benchmark ``render`` on CPU: native C++ vs pure-torch rasteriser vs dense reference.

Scene: N Gaussians uniform in a ball of radius 0.5, scales 0.02 (small jitter), opacity 0.27,
random colours; orbit camera at distance 2.5, fov 49 deg. Times are the minimum over repeats
after warm-up (other processes on a shared machine only ever add time); the 1-minute load
average is printed before and after, so a loaded run is visible as such.
Columns: the native path (``backend="native"``), the pure-torch path (``"torch"``) and
the dense float64 reference, with torch/native and dense/native forward+backward ratios.
Peak memory: increase of the process RSS high-water mark (/proc/self/status VmHWM, reset via
/proc/self/clear_refs) over the first forward+backward of a case; glibc keeps freed arenas
(``raster_torch.tune_allocator`` sets mallopt, called at the start), so later calls reuse that
memory and the number is an upper bound.
Run: ``python bench/render.py [--quick] [--threads T]``.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "backend"))

import torch  # noqa: E402

from stabledreamer.cameras import orbit_cameras  # noqa: E402
from stabledreamer.render import raster_native  # noqa: E402
from stabledreamer.render.dispatch import render  # noqa: E402
from stabledreamer.render.raster_torch import tune_allocator  # noqa: E402
from stabledreamer.render.reference import render_reference  # noqa: E402

DENSE_LIMIT = 2.1e7  # N x H x W pairs above which the dense reference is skipped (memory)


def make_scene(n: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    direction = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=-1)
    means = direction * 0.5 * torch.rand(n, 1, generator=g) ** (1 / 3)
    quats = torch.randn(n, 4, generator=g)
    return {
        "means": means,
        "scales": math.log(0.02) + 0.1 * torch.randn(n, 3, generator=g),
        "quats": quats,
        "opacities": torch.full((n,), math.log(0.27 / 0.73)),
        "sh0": torch.randn(n, 1, 3, generator=g),
        "shN": torch.zeros(n, 0, 3),
    }


def _hwm_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM"):
            return int(line.split()[1])
    return 0


def _reset_hwm() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS"):
            return int(line.split()[1])
    return 0


def time_case(fn, scene, cams, bg, repeats: int) -> tuple[float, float, float]:
    """Min forward ms, min forward+backward ms, peak RSS increase MiB."""
    params = {k: v.clone().requires_grad_() for k, v in scene.items()}

    def fwd():
        with torch.no_grad():
            fn(params, cams, bg)

    def fwd_bwd():
        out = fn(params, cams, bg)
        (out.rgb.sum() + out.alpha.sum() + 0.1 * out.depth.sum()).backward()

    _reset_hwm()
    base = _rss_kib()
    fwd_bwd()  # warm-up; its RSS high-water increase is the reported peak
    peak = (_hwm_kib() - base) / 1024
    fwd()
    t_f, t_fb = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fwd()
        t_f.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        fwd_bwd()
        t_fb.append(time.perf_counter() - t0)
    return min(t_f) * 1e3, min(t_fb) * 1e3, peak


def with_raster(path: str, fn):
    """``fn`` run with the rasteriser ``path`` ("native" or "torch")."""

    def run(*args):
        return fn(*args, backend=path)

    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a small subset")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    tune_allocator()
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = [20_000] if args.quick else [5_000, 20_000, 100_000]
    reses = [64, 128] if args.quick else [64, 128, 256]
    bg = torch.tensor([1.0, 1.0, 1.0])
    native = raster_native.available()
    isa = raster_native.isa() if native else f"unavailable: {raster_native.build_error()}"
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, native kernels: {isa}; "
        f"load average {os.getloadavg()[0]:.2f}; min ms over {args.repeats} repeats; "
        "peak = RSS high-water increase during one fwd+bwd"
    )
    print(
        f"{'N':>7} {'res':>5} {'C':>2} | {'native fwd':>10} {'f+b':>7} {'MiB':>5} | "
        f"{'torch fwd':>9} {'f+b':>7} {'MiB':>5} | {'dense f+b':>9} | {'torch/nat':>9} "
        f"{'dense/nat':>9}"
    )
    cases = [(n, r, 1) for n in sizes for r in reses] + [(20_000, 128, 1), (20_000, 128, 4)]
    for n, res, C in cases:
        scene = make_scene(n)
        az = torch.arange(C, dtype=torch.float32) * (360.0 / C) + 15.0
        cams = orbit_cameras(az, 15.0, 2.5, 49.0, res, res)
        reps = args.repeats if n * res * res < 1e9 else max(3, args.repeats // 2)
        nf = nfb = npk = math.nan
        if native:
            nf, nfb, npk = time_case(with_raster("native", render), scene, cams, bg, reps)
        tf, tfb, tpk = time_case(with_raster("torch", render), scene, cams, bg, reps)
        dense = "—"
        dfb = math.nan
        if n * res * res * C <= DENSE_LIMIT:
            _, dfb, _ = time_case(render_reference, scene, cams, bg, 3)
            dense = f"{dfb:.1f}"
        r_torch, r_dense = (f"{x / nfb:.1f}x" if x == x and nfb == nfb else "—" for x in (tfb, dfb))
        print(
            f"{n:>7} {res:>4}² {C:>2} | {nf:>10.1f} {nfb:>7.1f} {npk:>5.0f} | "
            f"{tf:>9.1f} {tfb:>7.1f} {tpk:>5.0f} | {dense:>9} | {r_torch:>9} {r_dense:>9}"
        )
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
