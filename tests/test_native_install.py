"""The native CPU rasteriser is compiled at install time, never at run time (issue 12 item 0).

A run that needs it loads the installed library or falls back to the torch path with one
warning; it never compiles, so a stale torch build lock cannot hang it. The wheel carries the
library, and a machine without a usable compiler still installs.
"""

import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import warnings
import zipfile
from pathlib import Path

import pytest
import torch

from stabledreamer.cameras import orbit_cameras
from stabledreamer.gaussians import InitConfig, init_ball
from stabledreamer.render import backend, native_build, raster_native, render

ROOT = Path(__file__).resolve().parents[1]
HAS_CXX = shutil.which((sysconfig.get_config_var("CXX") or "c++").split()[0]) is not None
needs_cxx = pytest.mark.skipif(not HAS_CXX, reason="no C++ compiler")
needs_native = pytest.mark.skipif(
    not raster_native.available(), reason=f"native library not built: {raster_native.build_error()}"
)


def _reset(monkeypatch):
    """Make raster_native look for its library again (restored after the test)."""
    for name, value in (("_tried", False), ("_lib", None), ("_error", None)):
        monkeypatch.setattr(raster_native, name, value)
    monkeypatch.setattr(backend, "_notices", set())  # the one-time notices, said again
    monkeypatch.delenv(backend.RASTER_ENV, raising=False)


@needs_cxx  # with a compiler, the install must have built it
def test_the_library_is_installed_in_the_package_and_nothing_is_compiled_at_run_time(tmp_path):
    assert raster_native.available(), raster_native.build_error()
    path = Path(raster_native.library_path())
    assert path.parent == Path(raster_native.__file__).parent
    assert path.name.startswith("_gauss_cpu")
    # A fresh process with an empty extensions folder renders natively and compiles nothing
    # there (a developer's own build/cache may still hold an older run-time build).
    ext_dir = tmp_path / "ext"
    script = textwrap.dedent("""
        import torch
        from stabledreamer.cameras import orbit_cameras
        from stabledreamer.gaussians import InitConfig, init_ball
        from stabledreamer.render import raster_native, render
        g = init_ball(InitConfig(num_points=100), torch.Generator().manual_seed(0))
        cams = orbit_cameras(torch.tensor([0.0]), 20.0, 2.5, 49.0, 16, 16)
        render(g, cams, torch.ones(3), backend="native")
        print("native", raster_native.available())
    """)
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(ext_dir)}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                         text=True, timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["native", "True"]
    assert not ext_dir.exists() or not any(ext_dir.rglob("*"))


def test_a_stale_torch_build_lock_cannot_hang_a_run(tmp_path):
    # A SIGKILLed cpp_extension build leaves <build_dir>/lock; torch's FileBaton then never
    # acquires it and waits forever. Leave that lock in every build folder torch would use: the
    # run must still finish (native from the install, or the torch path), within the timeout.
    # (Before the fix, the first-use JIT build hung here.)
    script = textwrap.dedent("""
        import os, warnings
        import torch
        from torch.utils import file_baton

        def left_by_a_killed_build(baton):
            os.makedirs(os.path.dirname(baton.lock_file_path), exist_ok=True)
            open(baton.lock_file_path, "a").close()
            return False

        file_baton.FileBaton.try_acquire = left_by_a_killed_build
        from stabledreamer.cameras import orbit_cameras
        from stabledreamer.gaussians import InitConfig, init_ball
        from stabledreamer.render import raster_native, render
        warnings.simplefilter("ignore")
        g = init_ball(InitConfig(num_points=100), torch.Generator().manual_seed(0))
        cams = orbit_cameras(torch.tensor([0.0]), 20.0, 2.5, 49.0, 16, 16)
        print("rendered", render(g, cams, torch.ones(3)).rgb.shape[0], raster_native.available())
    """)
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(tmp_path / "ext")}
    try:
        out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                             text=True, timeout=120)  # fmt: skip
    except subprocess.TimeoutExpired:
        pytest.fail("render() hung on a stale torch build lock")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[:2] == ["rendered", "1"]
    assert out.stdout.split()[2] == str(raster_native.available())


def _render_twice():
    g = init_ball(InitConfig(num_points=100), torch.Generator().manual_seed(0))
    cams = orbit_cameras(torch.tensor([0.0, 90.0]), 20.0, 2.5, 49.0, 16, 16)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        outs = [render(g, cams, torch.ones(3)).rgb for _ in range(2)]
    return outs, [w for w in caught if "native CPU rasteriser" in str(w.message)]


def test_without_the_library_the_torch_path_is_used_with_one_warning(monkeypatch):
    _reset(monkeypatch)
    monkeypatch.setattr(native_build, "MODULE", "stabledreamer.render._no_such_library")
    assert not raster_native.available()
    assert "is not installed" in raster_native.build_error()
    assert "make setup" in raster_native.build_error()
    outs, warned = _render_twice()
    assert backend.resolve_backend("auto", "cpu") == "torch"
    assert len(warned) == 1 and "is not installed" in str(warned[0].message)
    torch.testing.assert_close(outs[0], outs[1])


@needs_native
def test_a_library_built_from_other_sources_is_not_used(monkeypatch):
    _reset(monkeypatch)
    monkeypatch.setattr(native_build, "source_digest", lambda csrc=None: "0" * 16)
    assert not raster_native.available()
    assert "built from other sources" in raster_native.build_error()
    _, warned = _render_twice()
    assert len(warned) == 1


def test_msvc_is_skipped_with_a_reason():
    assert "MSVC" in native_build.unsupported("msvc")
    assert native_build.unsupported("unix") is None


def _copy_project(dest: Path) -> Path:
    """The files a build needs, without compiled outputs or caches."""
    dest.mkdir()
    for name in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, dest / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.so", "*.pyd", "*.egg-info")
    for name in ("backend", "shared"):
        shutil.copytree(ROOT / name, dest / name, ignore=ignore)
    return dest


@pytest.mark.slow
@needs_cxx
def test_the_wheel_carries_the_compiled_library(tmp_path):
    project = _copy_project(tmp_path / "src")
    out = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
         "-q", "-w", str(tmp_path / "dist"), str(project)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    (wheel,) = (tmp_path / "dist").glob("stabledreamer-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    libs = [n for n in names if n.startswith("stabledreamer/render/_gauss_cpu")]
    assert len(libs) == 1, names
    assert "stabledreamer/render/csrc/gauss_cpu.cpp" in names  # for the load-time digest check


def test_an_install_without_a_compiler_warns_and_succeeds(tmp_path):
    project = _copy_project(tmp_path / "src")
    env = {**os.environ, "CC": "no-such-compiler", "CXX": "no-such-compiler"}
    out = subprocess.run(
        [sys.executable, "setup.py", "build_ext", "--build-lib", str(tmp_path / "lib"),
         "--build-temp", str(tmp_path / "tmp")],
        cwd=project, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "native CPU rasteriser not built" in out.stderr
    assert not list((tmp_path / "lib").rglob("_gauss_cpu*"))
