"""Which rasteriser a run uses (render.backend) and gsplat's kernels (render.gsplat_kernels), on
the CPU with the kernels' availability injected: missing, present, forced."""

from __future__ import annotations

import pytest
import torch

from stabledreamer.errors import ConfigError
from stabledreamer.render import backend as backend_mod
from stabledreamer.render import gsplat_kernels
from stabledreamer.render.backend import RenderBackendError, resolve_backend

CUDA = torch.device("cuda")
CPU = torch.device("cpu")


def ready(ok: bool, why: str = "no nvcc (simulated)"):
    return lambda: (ok, "" if ok else why)


@pytest.fixture(autouse=True)
def fresh_notices(monkeypatch):
    monkeypatch.setattr(backend_mod, "_notices", set())
    monkeypatch.setattr(gsplat_kernels, "_failed", None)


def test_cuda_auto_uses_gsplat_when_its_kernels_are_there():
    notes: list[str] = []
    assert resolve_backend("auto", CUDA, gsplat_ready=ready(True), notify=notes.append) == "gsplat"
    assert notes == []


def test_cuda_auto_falls_back_to_torch_with_one_notice():
    notes: list[str] = []
    for _ in range(3):
        got = resolve_backend("auto", CUDA, gsplat_ready=ready(False), notify=notes.append)
        assert got == "torch"
    assert len(notes) == 1 and "no nvcc (simulated)" in notes[0] and "pure-torch" in notes[0]


def test_cuda_forced_gsplat_without_kernels_names_the_fix():
    with pytest.raises(RenderBackendError, match="nvcc.*CUDA_HOME|CUDA_HOME"):
        resolve_backend("gsplat", CUDA, gsplat_ready=ready(False))
    assert resolve_backend("gsplat", CUDA, gsplat_ready=ready(True)) == "gsplat"


def test_cuda_forced_torch_never_asks_for_gsplat():
    def boom():
        raise AssertionError("gsplat's status was read")

    assert resolve_backend("torch", CUDA, gsplat_ready=boom) == "torch"
    with pytest.raises(RenderBackendError, match="CPU kernel"):
        resolve_backend("native", CUDA, gsplat_ready=boom)


def test_cpu_choices():
    assert resolve_backend("auto", CPU, native_ready=ready(True)) == "native"
    notes: list[str] = []
    assert resolve_backend("auto", CPU, native_ready=ready(False), notify=notes.append) == "torch"
    assert len(notes) == 1
    assert resolve_backend("auto", CPU, torch.float64, native_ready=ready(True)) == "torch"
    with pytest.raises(RenderBackendError, match="did not build"):
        resolve_backend("native", CPU, native_ready=ready(False))
    with pytest.raises(RenderBackendError, match="needs a CUDA device"):
        resolve_backend("gsplat", CPU)
    with pytest.raises(ConfigError, match="choose one of"):
        resolve_backend("vulkan", CPU)


def test_kernel_status_on_this_machine_never_builds(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    st = gsplat_kernels.status()
    assert not (tmp_path / "gsplat_cuda").exists()  # asking created nothing
    if torch.version.cuda is None:
        assert not st.ready and "CPU-only" in st.why


def test_kernel_status_sees_a_finished_build(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    monkeypatch.setattr(gsplat_kernels.torch.version, "cuda", "12.8")
    monkeypatch.setattr(gsplat_kernels, "aot_available", lambda: False)
    monkeypatch.setattr(gsplat_kernels, "toolkit_available", lambda: False)
    st = gsplat_kernels.status()
    assert not st.ready and not st.can_build and "nvcc" in st.why and "CUDA_HOME" in st.why
    monkeypatch.setattr(gsplat_kernels, "toolkit_available", lambda: True)
    st = gsplat_kernels.status()
    assert not st.ready and st.can_build
    (tmp_path / "gsplat_cuda").mkdir()
    (tmp_path / "gsplat_cuda" / "gsplat_cuda.so").write_bytes(b"")
    assert gsplat_kernels.status().ready


def test_max_jobs_follows_free_ram():
    gib = 2**30
    assert gsplat_kernels.max_jobs_for(4 * gib, cpus=16) == 1
    assert gsplat_kernels.max_jobs_for(1 * gib, cpus=16) == 1  # at least one
    assert gsplat_kernels.max_jobs_for(16 * gib, cpus=16) == 6
    assert gsplat_kernels.max_jobs_for(256 * gib, cpus=4) == 4  # at most the CPUs
    assert gsplat_kernels.max_jobs_for(256 * gib, cpus=64) == 10  # at most gsplat's default


def test_build_reports_progress_and_sets_max_jobs(monkeypatch):
    monkeypatch.delenv("MAX_JOBS", raising=False)
    seen: dict[str, str] = {}
    lines: list[str] = []

    def slow_load():
        import time

        seen["MAX_JOBS"] = __import__("os").environ["MAX_JOBS"]
        time.sleep(0.25)
        return object()

    seconds = gsplat_kernels.build(lines.append, max_jobs=3, every_s=0.05, load=slow_load)
    assert seen["MAX_JOBS"] == "3" and seconds >= 0.25
    assert any("still compiling" in x for x in lines) and "ready" in lines[-1]
    assert "MAX_JOBS" not in __import__("os").environ  # restored


def test_build_failure_says_what_to_do_and_the_run_falls_back(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    with pytest.raises(RuntimeError, match="CUDA_HOME.*torch"):
        gsplat_kernels.build(lambda s: None, max_jobs=1, load=lambda: None)
    st = gsplat_kernels.status()  # a failed load is remembered: no gsplat for this process
    assert not st.ready and "failed in this process" in st.why
    assert resolve_backend("auto", CUDA, notify=lambda s: None) == "torch"


def test_build_runs_under_the_build_guard(monkeypatch, tmp_path):
    """One builder per build folder across processes (render.build_guard), a killed build's
    torch lock removed first."""
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    (tmp_path / "gsplat_cuda").mkdir()
    (tmp_path / "gsplat_cuda" / "lock").write_text("")  # left by a killed build
    lines: list[str] = []

    def load():
        assert (tmp_path / "gsplat_cuda.guard").exists()
        assert not (tmp_path / "gsplat_cuda" / "lock").exists()
        return object()

    gsplat_kernels.build(lines.append, max_jobs=1, load=load)
    assert any("removed" in x and "lock" in x for x in lines)


def test_the_configs_choices_are_the_renderers():
    import typing

    from stabledreamer.config_space import RenderBackend

    assert typing.get_args(RenderBackend) == backend_mod.BACKENDS
