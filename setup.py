"""Build the native CPU rasteriser at install time (everything else is in pyproject.toml).

``stabledreamer.render._gauss_cpu`` is an optional extension: a machine without a suitable C++
compiler (or with MSVC) gets a warning and the pure-torch rasteriser, never a failed install.
The library needs no torch headers, so the build never needs torch (nor pulls it into a build
environment). See ``backend/stabledreamer/render/native_build.py``.
"""

import importlib.util
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

_HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location(
    "_stabledreamer_native_build", _HERE / "backend/stabledreamer/render/native_build.py"
)
nb = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(nb)


def _warn(text: str) -> None:
    print(f"WARNING: stabledreamer: {text}", file=sys.stderr, flush=True)


class OptionalBuildExt(build_ext):
    """Compiles the kernel with its flags; any failure is a warning (the torch path is used)."""

    def build_extension(self, ext: Extension) -> None:
        why = nb.unsupported(self.compiler.compiler_type)
        if why:
            _warn(f"native CPU rasteriser not built: {why}")
            return
        ext.extra_compile_args = list(nb.UNIX_CFLAGS)
        ext.extra_link_args = list(nb.UNIX_LDFLAGS)
        ext.define_macros = [("SD_SOURCE_DIGEST", f'"{nb.source_digest()}"')]
        try:
            super().build_extension(ext)
        except Exception as exc:  # noqa: BLE001 - compiler missing, compile or link error
            _warn(
                f"native CPU rasteriser not built ({type(exc).__name__}: {exc}); the slower "
                "pure-torch rasteriser will be used. Install g++ (or clang++) with OpenMP and "
                "reinstall to get it."
            )

    def get_export_symbols(self, ext: Extension) -> list[str]:
        return []  # a C-ABI library loaded by ctypes, not a Python module: no PyInit_ symbol


_csrc = Path("backend/stabledreamer/render/csrc")
setup(
    ext_modules=[
        Extension(
            nb.MODULE,
            sources=[str(_csrc / s) for s in nb.SOURCES],
            depends=[str(_csrc / h) for h in nb.HEADERS],
            language="c++",
            optional=True,
        )
    ],
    cmdclass={"build_ext": OptionalBuildExt},
)
