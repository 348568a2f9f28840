"""Preflight before any model loads: a machine without gsplat's kernels still runs, and a run that
cannot work fails in seconds naming the fix. CUDA is simulated on the CPU where needed."""

import time

import pytest
import torch

from stabledreamer import device as device_mod
from stabledreamer.doctor.preflight import PreflightError, preflight
from stabledreamer.mesh.config import MeshConfig
from stabledreamer.presets import get_preset
from stabledreamer.render import backend as backend_mod
from stabledreamer.render import gsplat_kernels
from stabledreamer.runs.generate import run_generation


@pytest.fixture(autouse=True)
def _fresh_notices(monkeypatch):
    monkeypatch.setattr(backend_mod, "_notices", set())


def text_config(tiny_models):
    cfg = get_preset("preview")
    cfg.prompt = "a red chair"
    cfg.deepfloyd_if.model = str(tiny_models / "if")
    cfg.stable_diffusion.model = str(tiny_models / "sd")
    return cfg


@pytest.fixture
def no_gsplat_kernels(monkeypatch):
    """A CUDA machine whose gsplat cannot compile (no nvcc): what pip's CUDA torch gives."""
    st = gsplat_kernels.KernelStatus(False, False, "no CUDA compiler (nvcc) (simulated)")
    monkeypatch.setattr(gsplat_kernels, "status", lambda: st)


@pytest.fixture
def fake_cuda(monkeypatch):
    monkeypatch.setattr(device_mod, "resolve_device", lambda name="auto": torch.device("cuda"))


@pytest.mark.usefixtures("fake_cuda", "no_gsplat_kernels")
def test_without_gsplat_kernels_the_run_renders_with_torch(tiny_models, tmp_path):
    cfg = text_config(tiny_models)
    pf = preflight(cfg, tmp_path, gpu_free_gib=lambda d: (23.0, 23.6))
    assert pf.render_backend == "torch" and pf.memory_tier == 24
    assert any("pure-torch" in n and "simulated" in n for n in pf.notes)


@pytest.mark.usefixtures("fake_cuda", "no_gsplat_kernels")
def test_forcing_gsplat_without_kernels_fails_before_loading(tiny_models, tmp_path):
    cfg = text_config(tiny_models)
    cfg.render_backend = "gsplat"
    with pytest.raises(PreflightError, match="(?s)fix:.*CUDA_HOME"):
        preflight(cfg, tmp_path, gpu_free_gib=lambda d: (23.0, 23.6))


@pytest.mark.usefixtures("fake_cuda", "no_gsplat_kernels")
def test_too_little_free_gpu_memory_fails_with_the_fix(tiny_models, tmp_path):
    cfg = text_config(tiny_models)
    with pytest.raises(PreflightError, match="8 GB tier.*\\n  fix: close other programs"):
        preflight(cfg, tmp_path, gpu_free_gib=lambda d: (3.0, 23.6))
    with pytest.raises(PreflightError, match="(?s)--memory 24.*fix: pass --memory auto"):
        preflight(cfg, tmp_path, memory="24", gpu_free_gib=lambda d: (10.0, 11.7))
    pf = preflight(cfg, tmp_path, gpu_free_gib=lambda d: (11.2, 11.7))
    assert pf.memory_tier == 12 and pf.estimate_gib < 11.2


def test_every_problem_is_listed_in_seconds(tmp_path):
    cfg = get_preset("preview")
    cfg.prompt = "a cat"
    cfg.deepfloyd_if.model = str(tmp_path / "no-if")
    cfg.stable_diffusion.model = str(tmp_path / "no-sd")
    start = time.perf_counter()
    with pytest.raises(PreflightError) as err:
        preflight(cfg, tmp_path / "run")
    assert time.perf_counter() - start < 10.0
    text = str(err.value)
    assert "if model" in text and "sd model" in text and text.count("fix:") >= 2


def test_a_cpu_run_without_kernels_generates_to_the_end_with_torch(tiny_models, tmp_path):
    """The simulated machine: gsplat unavailable, the torch rasteriser forced (the choice a CUDA
    machine without nvcc makes), the preflight run by generate before any model loads."""
    cfg = text_config(tiny_models)
    cfg.render_backend = "torch"
    cfg.device = "cpu"
    cfg.init.num_points = 300
    cfg.camera.batch_size = 2
    cfg.stages[0].steps, cfg.stages[1].steps = 2, 1
    cfg.stages[1].resolution = cfg.stable_diffusion.resolution = 64
    cfg.eval_resolution, cfg.checkpoint_every = 32, 1
    cfg.mesh = MeshConfig(enabled=False)
    seen = []

    def check(c):
        seen.append(preflight(c, tmp_path / "run"))
        return seen[-1].memory_tier

    metrics = run_generation(cfg, tmp_path / "run", preflight=check)
    assert seen and seen[0].render_backend == "torch" and seen[0].memory_tier is None
    assert metrics["render_backend"] == "torch" and metrics["steps"] == 3
    assert (tmp_path / "run" / "gaussians.ply").is_file()
