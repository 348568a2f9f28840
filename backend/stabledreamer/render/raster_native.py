"""Native CPU projection + tile rasteriser (``csrc/gauss_cpu.cpp``), compiled at install time.

Same semantics as ``projection.project`` and ``raster_torch.rasterize`` (gsplat 1.5.3 "classic"),
float32 only. The C++ has a plain C ABI and no torch headers; ``setup.py`` compiles it when the
package is installed, as the optional module ``_gauss_cpu`` next to this file (flags in
``native_build``: ``-O3`` without ``-march=native``, OpenMP; the process already has torch's
libgomp loaded, so both share one runtime). Nothing is compiled at run time: a job never waits on
a build. The library is called through ctypes on the tensors' data pointers. Two
``autograd.Function``s (projection, rasterisation) keep ``means2d`` a real graph node, so
``meta["means2d"].grad`` works as with gsplat. The tile kernels exist for baseline x86-64 and
for AVX2 (``#pragma GCC target``, picked from the CPU at load time, see ``isa()``), and gradients
are bit-reproducible run to run, whatever the thread count.

``available()`` says whether the installed library loaded; ``build_error()`` says why not (not
built at install, built from other sources, failed to load) and how to build it.
"""

from __future__ import annotations

import ctypes
import importlib.util
import threading

import torch
from torch import Tensor

from . import native_build
from .projection import EPS2D, NEAR_PLANE, Projected

_ABI_VERSION = 1
_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_error: str | None = None
_tried = False

_f = ctypes.c_float
_i = ctypes.c_int
_p = ctypes.c_void_p


class NativeUnavailable(RuntimeError):
    """The compiled library is missing, stale or unloadable (the message says which and why)."""


def library_path() -> str | None:
    """Where the installed library is (``_gauss_cpu`` plus the platform's extension suffix)."""
    try:
        spec = importlib.util.find_spec(native_build.MODULE)
    except ImportError:
        return None
    return spec.origin if spec is not None else None


def _load() -> ctypes.CDLL:
    path = library_path()
    if path is None:
        raise NativeUnavailable(
            f"{native_build.MODULE} is not installed (the install found no suitable C++ "
            f"compiler, or its build failed: see the pip log); {native_build.REBUILD_HINT}"
        )
    try:
        lib = ctypes.CDLL(path)
    except OSError as exc:
        raise NativeUnavailable(f"cannot load {path}: {exc}; {native_build.REBUILD_HINT}") from exc
    try:
        lib.sd_abi_version.restype = _i
        lib.sd_source_digest.restype = ctypes.c_char_p
    except AttributeError as exc:  # a library from before these symbols existed
        raise NativeUnavailable(f"{path} is outdated ({exc}); {native_build.REBUILD_HINT}") from exc
    if lib.sd_abi_version() != _ABI_VERSION:
        raise NativeUnavailable(f"{path} has another ABI version; {native_build.REBUILD_HINT}")
    built, here = lib.sd_source_digest().decode(), native_build.source_digest()
    if here is not None and built != here:
        raise NativeUnavailable(
            f"{path} was built from other sources than the C++ in {native_build.CSRC} (source "
            f"digest {built}, the files now give {here}); {native_build.REBUILD_HINT}"
        )
    lib.sd_project_fwd.argtypes = [_i, _i] + [_p] * 6 + [_i, _i, _f, _f] + [_p] * 4 + [_i]
    lib.sd_project_fwd.restype = None
    lib.sd_project_bwd.argtypes = [_i, _i] + [_p] * 5 + [_i, _i, _f, _f] + [_p] * 6 + [_i]
    lib.sd_project_bwd.restype = None
    lib.sd_raster_fwd.argtypes = [_i] * 4 + [_p] * 4 + [_i, _p, _p, _p, _i]
    lib.sd_raster_fwd.restype = _p
    lib.sd_raster_bwd.argtypes = [_p] * 7 + [_i]
    lib.sd_raster_bwd.restype = None
    lib.sd_raster_free.argtypes = [_p]
    lib.sd_raster_free.restype = None
    lib.sd_raster_n_entries.argtypes = [_p]
    lib.sd_raster_n_entries.restype = ctypes.c_int64
    lib.sd_get_isa.restype = _i
    lib.sd_set_isa.argtypes = [_i]
    lib.sd_set_isa.restype = _i
    return lib


def library() -> ctypes.CDLL | None:
    """The installed library, loaded on first call; None when it is missing or unusable."""
    global _lib, _error, _tried
    if _tried:
        return _lib
    with _lock:
        if not _tried:
            try:
                _lib = _load()
            except NativeUnavailable as exc:
                _error = str(exc)
            _tried = True
    return _lib


def available() -> bool:
    return library() is not None


def build_error() -> str | None:
    library()
    return _error


ISA_NAMES = ("x86-64", "avx2")


def isa() -> str:
    """The instruction set of the tile kernels in use (picked from the CPU at load time)."""
    return ISA_NAMES[library().sd_get_isa()]


def set_isa(name: str) -> str:
    """Cap the tile kernels' instruction set (tests run every variant the CPU supports)."""
    return ISA_NAMES[library().sd_set_isa(ISA_NAMES.index(name))]


def _ptr(t: Tensor) -> int:
    return t.data_ptr()


def _f32(t: Tensor) -> Tensor:
    return t.detach().to(torch.float32).contiguous()


class _Project(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means, quats, scales, opacities, viewmats, Ks, width, height):
        lib = library()
        C, N = viewmats.shape[0], means.shape[0]
        means, quats, scales = _f32(means), _f32(quats), _f32(scales)
        viewmats, Ks = _f32(viewmats), _f32(Ks)
        op = _f32(opacities)
        means2d = torch.empty(C, N, 2)
        conics = torch.empty(C, N, 3)
        depths = torch.empty(C, N)
        radii = torch.empty(C, N, 2, dtype=torch.int32)
        lib.sd_project_fwd(C, N, _ptr(means), _ptr(quats), _ptr(scales), _ptr(op),
                           _ptr(viewmats), _ptr(Ks), width, height, EPS2D, NEAR_PLANE,
                           _ptr(means2d), _ptr(conics), _ptr(depths), _ptr(radii),
                           torch.get_num_threads())  # fmt: skip
        ctx.save_for_backward(means, quats, scales, viewmats, Ks)
        ctx.dims = (width, height)
        ctx.mark_non_differentiable(radii)
        return means2d, conics, depths, radii

    @staticmethod
    def backward(ctx, v_means2d, v_conics, v_depths, _v_radii):
        lib = library()
        means, quats, scales, viewmats, Ks = ctx.saved_tensors
        C, N = viewmats.shape[0], means.shape[0]
        width, height = ctx.dims

        def grad(v, shape):
            return torch.zeros(shape) if v is None else _f32(v)

        v_means2d = grad(v_means2d, (C, N, 2))
        v_conics = grad(v_conics, (C, N, 3))
        v_depths = grad(v_depths, (C, N))
        v_means, v_quats, v_scales = torch.empty(N, 3), torch.empty(N, 4), torch.empty(N, 3)
        lib.sd_project_bwd(C, N, _ptr(means), _ptr(quats), _ptr(scales), _ptr(viewmats),
                           _ptr(Ks), width, height, EPS2D, NEAR_PLANE, _ptr(v_means2d),
                           _ptr(v_conics), _ptr(v_depths), _ptr(v_means), _ptr(v_quats),
                           _ptr(v_scales), torch.get_num_threads())  # fmt: skip
        return v_means, v_quats, v_scales, None, None, None, None, None


class _State:
    """Owns the C++ rasteriser state (tile lists, packed Gaussians) between forward and backward."""

    def __init__(self, lib: ctypes.CDLL, handle: int):
        self.lib, self.handle = lib, handle

    def __del__(self):
        if self.handle:
            self.lib.sd_raster_free(self.handle)
            self.handle = None


class _Rasterize(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means2d, conics, opacities, colors, depths, radii, height, width):
        lib = library()
        C, N = means2d.shape[:2]
        shared = colors.dim() == 2
        m2, con, op, col, dep = (_f32(t) for t in (means2d, conics, opacities, colors, depths))
        rad = radii.to(torch.int32).contiguous()
        out = torch.empty(C, height, width, 5)
        handle = lib.sd_raster_fwd(C, N, height, width, _ptr(m2), _ptr(con), _ptr(op),
                                   _ptr(col), int(shared), _ptr(dep), _ptr(rad), _ptr(out),
                                   torch.get_num_threads())  # fmt: skip
        ctx.state = _State(lib, handle)
        ctx.meta = (C, N, shared)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        C, N, shared = ctx.meta
        state = ctx.state
        g = _f32(grad_out)
        v_means2d, v_conics = torch.empty(C, N, 2), torch.empty(C, N, 3)
        v_opac, v_depths = torch.empty(N), torch.empty(C, N)
        v_colors = torch.empty(N, 3) if shared else torch.empty(C, N, 3)
        state.lib.sd_raster_bwd(state.handle, _ptr(g), _ptr(v_means2d), _ptr(v_conics),
                                _ptr(v_opac), _ptr(v_colors), _ptr(v_depths),
                                torch.get_num_threads())  # fmt: skip
        return v_means2d, v_conics, v_opac, v_colors, v_depths, None, None, None


def project(
    means: Tensor,  # [N, 3]
    quats: Tensor,  # [N, 4] wxyz, unnormalised
    scales: Tensor,  # [N, 3] activated
    opacities: Tensor,  # [N] activated (only for the extent / culling; no gradient)
    viewmats: Tensor,  # [C, 4, 4]
    Ks: Tensor,  # [C, 3, 3]
    width: int,
    height: int,
) -> Projected:
    """``projection.project`` in C++ (eps2d and near plane fixed at gsplat's defaults)."""
    means2d, conics, depths, radii = _Project.apply(
        means, quats, scales, opacities.detach(), viewmats, Ks, width, height
    )
    return Projected(means2d, conics, depths, radii, (radii > 0).any(-1))


def rasterize(
    means2d: Tensor,  # [C, N, 2]
    conics: Tensor,  # [C, N, 3]
    opacities: Tensor,  # [N] activated
    colors: Tensor,  # [N, 3] shared by all cameras, or [C, N, 3]
    depths: Tensor,  # [C, N]
    radii: Tensor,  # [C, N, 2] int, 0 for culled
    height: int,
    width: int,
) -> Tensor:
    """Differentiable pixel sums [C, H, W, 5]: (sum w rgb, sum w z, alpha), like raster_torch."""
    return _Rasterize.apply(means2d, conics, opacities, colors, depths, radii, height, width)
