"""gsplat's CUDA kernels: are they there (without building), and build them once, visibly.

gsplat 1.5.3 ships pure Python: its kernels come from an ahead-of-time build (``gsplat.csrc``) or
are compiled by ``gsplat.cuda._backend`` at the first kernel call (torch's JIT extension build:
``gsplat_cuda.so`` under ``$TORCH_EXTENSIONS_DIR/gsplat_cuda`` or
``~/.cache/torch_extensions/py<ver>_cu<ver>/gsplat_cuda``). Without nvcc that import only warns,
leaves ``_C`` None, and the first ``rasterization`` raises ``AttributeError`` - minutes into a
job, after the models loaded. With nvcc the multi-minute build runs inside step 1, silently,
with ``MAX_JOBS=10`` (gsplat's default), which can exhaust RAM.

So runs ask ``status()`` first (no build, no import of the backend) and the preflight calls
``build()`` when kernels are missing and a toolkit is there: progress every few seconds, and
``MAX_JOBS`` sized to the free RAM (``max_jobs_for``).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from .build_guard import build_guard

EXT_NAME = "gsplat_cuda"
GIB_PER_JOB = 2.5
"""Free RAM assumed per parallel nvcc job when sizing MAX_JOBS. Our assumption, not measured:
gsplat's default of 10 jobs is what the issue saw exhausting RAM; `make gpu-check` records the
build's time on the machine it runs on."""
MAX_JOBS_CAP = 10
"""gsplat's own default MAX_JOBS (gsplat/cuda/_backend.py)."""
GUARD_WAIT_S = 1200.0
"""How long a build waits for another process's build of the same folder (``build_guard``): a
gsplat build takes minutes (`make gpu-check` times it); past this the error names the holder."""

_failed: str | None = None  # why loading the kernels failed in this process (then: not ready)


@dataclass
class KernelStatus:
    ready: bool  # importable now without compiling
    can_build: bool  # a CUDA toolkit (nvcc) is there to compile them
    why: str  # when not ready: what is missing and the fix
    build_dir: Path | None = None


def extensions_root() -> Path:
    """torch's JIT extension folder (``torch.utils.cpp_extension._get_build_directory``'s root)."""
    root = os.environ.get("TORCH_EXTENSIONS_DIR")
    if root:
        return Path(root)
    cu = (torch.version.cuda or "").replace(".", "")
    tag = f"py{sys.version_info.major}{sys.version_info.minor}_" + (f"cu{cu}" if cu else "cpu")
    return Path.home() / ".cache" / "torch_extensions" / tag


def build_dir() -> Path:
    return extensions_root() / EXT_NAME


def toolkit_available() -> bool:
    """nvcc under CUDA_HOME/CUDA_PATH or on PATH (what gsplat's ``cuda_toolkit_available`` asks)."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        home = os.environ.get(var)
        if home and (Path(home) / "bin" / "nvcc").exists():
            return True
    return shutil.which("nvcc") is not None


def aot_available() -> bool:
    """A gsplat built ahead of time (from source with its kernels) carries ``gsplat.csrc``."""
    try:
        return importlib.util.find_spec("gsplat.csrc") is not None
    except (ImportError, ValueError):
        return False


def status() -> KernelStatus:
    """Whether gsplat's kernels can be loaded now, without compiling anything."""
    if _failed is not None:
        return KernelStatus(False, False, f"loading them failed in this process: {_failed}")
    if torch.version.cuda is None:
        return KernelStatus(False, False, f"this torch ({torch.__version__}) is a CPU-only build")
    if importlib.util.find_spec("gsplat") is None:
        return KernelStatus(False, False, "gsplat is not installed (pip install gsplat==1.5.3)")
    bdir = build_dir()
    if aot_available() or (bdir / f"{EXT_NAME}.so").exists():
        return KernelStatus(True, toolkit_available(), "", bdir)
    if toolkit_available():
        return KernelStatus(
            False, True, f"not built yet (they compile once into {bdir}, minutes)", bdir
        )
    return KernelStatus(
        False,
        False,
        "no CUDA compiler (nvcc) to build them: install the CUDA toolkit matching torch's CUDA "
        f"{torch.version.cuda} and set CUDA_HOME",
        bdir,
    )


def free_ram_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (Linux), else None."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def max_jobs_for(free_bytes: int | None, cpus: int | None = None) -> int:
    """Parallel compile jobs: one per ``GIB_PER_JOB`` of free RAM, at most the CPUs and gsplat's
    default 10, at least 1."""
    cpus = cpus or os.cpu_count() or 1
    by_ram = MAX_JOBS_CAP if free_bytes is None else int(free_bytes / (GIB_PER_JOB * 2**30))
    return max(1, min(by_ram, cpus, MAX_JOBS_CAP))


def _load_backend() -> object:
    """Import gsplat's backend: loads, or compiles then loads, the kernels; returns ``_C``."""
    return importlib.import_module("gsplat.cuda._backend")._C


def build(
    progress: Callable[[str], None] = print,
    *,
    max_jobs: int | None = None,
    every_s: float = 10.0,
    load: Callable[[], object] | None = None,
) -> float:
    """Compile (or load) gsplat's kernels now, saying so every ``every_s`` seconds; returns the
    seconds it took. Under ``build_guard``: one builder per build folder across processes, a
    stale torch lock from a killed build removed. Raises ``RuntimeError`` with the fix when they
    cannot be had; ``status()`` then says not ready for the rest of this process."""
    global _failed
    load = load or _load_backend
    jobs = max_jobs or max_jobs_for(free_ram_bytes())
    old = os.environ.get("MAX_JOBS")
    os.environ["MAX_JOBS"] = str(jobs)
    result: dict[str, object] = {}

    def work() -> None:
        try:
            result["C"] = load()
        except BaseException as e:  # noqa: BLE001 - reported to the caller below
            result["error"] = e

    start = time.perf_counter()
    st = status()
    what = "loading" if st.ready else f"building its CUDA kernels once into {build_dir()}"
    progress(f"gsplat: {what} (MAX_JOBS={jobs})")
    try:
        with build_guard(build_dir(), GUARD_WAIT_S, "gsplat CUDA kernels", notify=progress):
            thread = threading.Thread(target=work, name="gsplat-build", daemon=True)
            thread.start()
            while thread.is_alive():
                thread.join(every_s)
                if thread.is_alive():
                    progress(f"gsplat: still compiling ({time.perf_counter() - start:.0f} s)")
    finally:
        if old is None:
            os.environ.pop("MAX_JOBS", None)
        else:
            os.environ["MAX_JOBS"] = old
    seconds = time.perf_counter() - start
    if "error" in result or result.get("C") is None:
        err = result.get("error")
        detail = f"{type(err).__name__}: {str(err)[-300:]}" if err else "gsplat disabled itself"
        _failed = detail
        raise RuntimeError(
            f"gsplat's CUDA kernels did not build ({detail}). Install the CUDA toolkit matching "
            f"torch's CUDA {torch.version.cuda} and set CUDA_HOME, or run with the pure-torch "
            "renderer (render backend 'torch' or 'auto')"
        )
    progress(f"gsplat: kernels ready ({seconds:.0f} s)")
    return seconds
