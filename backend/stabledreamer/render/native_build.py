"""How the native CPU rasteriser is compiled: one place for ``setup.py`` and ``raster_native``.

The kernel (``csrc/gauss_cpu.cpp``) is built when the package is installed, as the optional
compiled module ``stabledreamer.render._gauss_cpu`` (``pip install`` and wheels carry it; an
editable install builds it next to this file). It is a plain shared library with a C ABI, loaded
through ctypes: no torch or Python headers, so the build needs only a C++ compiler, never torch.

Standard library only: ``setup.py`` loads this file by path, before anything is installed.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

MODULE = "stabledreamer.render._gauss_cpu"
CSRC = Path(__file__).with_name("csrc")
SOURCES = ("gauss_cpu.cpp",)
HEADERS = ("tile_kernel.h",)

# The flags the kernel was tuned and checked with (bit-identical demo): -O3 without -march=native
# (a wheel runs on other CPUs; the AVX2 tile kernel is picked at load time), no FMA contraction
# (results match the torch path), OpenMP. They come after Python's CFLAGS: -g0 drops the debug
# info those ask for, -fno-wrapv undoes their -fwrapv, so g++ 12.2 emits the same machine code as
# the run-time build it replaces did (objdump, one new function aside), and the speeds measured
# with that build hold.
UNIX_CFLAGS = ("-O3", "-g0", "-fno-wrapv", "-std=c++17", "-fopenmp", "-ffp-contract=off",
               "-fno-math-errno", "-Wno-psabi")  # fmt: skip
UNIX_LDFLAGS = ("-fopenmp",)
REBUILD_HINT = (
    "build it with g++ or clang++ and OpenMP installed: `make setup` (or `pip install --no-deps "
    "--no-build-isolation -e .`) reinstalls the package, `make native` (`python setup.py "
    "build_ext --inplace`) builds it in a source checkout used through PYTHONPATH"
)


def unsupported(compiler_type: str) -> str | None:
    """Why this compiler cannot build the kernel, or None when it can."""
    if compiler_type == "msvc":
        return (
            "MSVC cannot compile it (the tile kernels use GCC/Clang vector extensions); "
            "build with clang-cl or MinGW g++, or use the pure-torch path"
        )
    return None


def source_digest(csrc: Path = CSRC) -> str | None:
    """SHA-256 (16 hex digits) of the kernel's sources and headers; None when they are absent.

    Compiled into the library (``sd_source_digest``) and checked at load time, so a library left
    from older sources (an editable install whose C++ changed since) is not used silently.
    """
    digest = hashlib.sha256()
    for name in SOURCES + HEADERS:
        path = csrc / name
        if not path.is_file():
            return None
        digest.update(name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]
