"""Where a run trains: device auto | cpu | cuda, changeable on resume, clear error without CUDA."""

import json

import pytest
import torch

from stabledreamer.cli import main
from stabledreamer.device import DeviceError, resolve_device
from stabledreamer.guidance.tiny_models import save_tiny_models
from stabledreamer.presets import get_preset
from stabledreamer.runs.checkpoint import load_checkpoint
from stabledreamer.runs.generate import build_guidance
from stabledreamer.runs.reconstruct import PROCEDURAL_DEMO, run_reconstruction
from stabledreamer.runs.trainer import TrainingCancelled

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
without_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is present here")


def smoke(steps=4):
    cfg = get_preset("smoke")
    cfg.target = PROCEDURAL_DEMO
    cfg.stages[0].steps = steps
    return cfg


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny")
    save_tiny_models(d)
    return d


def test_names():
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    for bad in ("gpu", "cuda:x", "cpu:0", ""):
        with pytest.raises(DeviceError, match="auto, cpu, cuda"):
            resolve_device(bad)


@without_cuda
@pytest.mark.parametrize("name", ["cuda", "cuda:0"])
def test_cuda_without_cuda_says_what_to_do(name):
    with pytest.raises(DeviceError, match="CUDA is not available") as e:
        resolve_device(name)
    assert "--device cpu" in str(e.value) and "doctor" in str(e.value)


@without_cuda
def test_cli_cuda_without_cuda_fails_before_writing(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["demo", "--preset", "smoke", "--out", str(out), "--device", "cuda", "--quiet"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "CUDA is not available" in err and "--device cpu" in err
    assert not out.exists()


def test_cpu_run_keeps_everything_on_the_cpu(tmp_path):
    cfg = smoke(2)
    metrics = run_reconstruction(cfg, tmp_path / "run", device="cpu")
    assert metrics["steps"] == 2
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["device"] == "cpu"
    ck = load_checkpoint(tmp_path / "run")
    assert all(v.device.type == "cpu" for v in ck["params"].values())


def test_resume_may_change_the_device(tmp_path):
    """A run saved with device=cuda (say, on a GPU box) resumes here with --device cpu."""
    out = tmp_path / "run"
    with pytest.raises(TrainingCancelled):
        run_reconstruction(smoke(4), out, device="cpu", callback=lambda p: p.global_step == 2)
    cfg_file = out / "config.json"
    saved = json.loads(cfg_file.read_text())
    saved["device"] = "cuda"
    cfg_file.write_text(json.dumps(saved))
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError):
            run_reconstruction(None, out, resume=True)
    assert main(["reconstruct", "--resume", str(out), "--device", "cpu", "--quiet"]) == 0
    assert json.loads((out / "metrics.json").read_text())["steps"] == 4


def test_guidance_follows_the_run_device(tiny, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = get_preset("preview")
    cfg.prompt, cfg.device = "a red chair", "cpu"
    cfg.deepfloyd_if.model = str(tiny / "if")
    g = build_guidance(cfg, cfg.stages[0])
    assert g.device == torch.device("cpu") and g.dtype == torch.float32
    assert g.embeddings.cond.device == torch.device("cpu")


@pytest.mark.gpu
@needs_cuda
def test_generate_on_cuda_and_resume_on_cpu(tiny, tmp_path, monkeypatch):
    """Tiny models on the GPU: params, renders (gsplat) and guidance agree; then the CUDA
    checkpoint continues on the CPU."""
    from stabledreamer.mesh.config import MeshConfig
    from stabledreamer.runs.generate import run_generation

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = get_preset("preview")
    cfg.prompt = "a red chair"
    cfg.deepfloyd_if.model, cfg.stable_diffusion.model = str(tiny / "if"), str(tiny / "sd")
    cfg.init.num_points, cfg.camera.batch_size = 300, 2
    cfg.stages[0].steps, cfg.stages[1].steps = 3, 2
    cfg.stages[1].resolution = cfg.stable_diffusion.resolution = 64
    cfg.eval_resolution, cfg.checkpoint_every, cfg.debug_every = 32, 1, 2
    cfg.mesh = MeshConfig(enabled=False)
    devices = []
    out = tmp_path / "run"

    def stop_in_detail(p):
        devices.append(p.params["means"].device.type)
        return p.stage == "detail"

    with pytest.raises(TrainingCancelled):
        run_generation(cfg, out, device="cuda", callback=stop_in_detail)
    assert set(devices) == {"cuda"}
    metrics = run_generation(None, out, resume=True, device="cpu")
    assert metrics["steps"] == 5
    metrics = run_generation(cfg, tmp_path / "gpu", device="cuda")
    assert all(s["peak_gpu_mb"] > 0 for s in metrics["stages"].values())


def test_cpu_offload_is_saved_and_harmless_on_the_cpu(tiny, tmp_path, monkeypatch):
    from stabledreamer.mesh.config import MeshConfig
    from stabledreamer.runs.generate import run_generation

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = get_preset("preview")
    cfg.prompt = "a red chair"
    cfg.deepfloyd_if.model, cfg.stable_diffusion.model = str(tiny / "if"), str(tiny / "sd")
    cfg.init.num_points, cfg.camera.batch_size = 300, 1
    cfg.stages[0].steps = cfg.stages[1].steps = 1
    cfg.stages[1].resolution = cfg.stable_diffusion.resolution = 64
    cfg.eval_resolution = 32
    cfg.mesh = MeshConfig(enabled=False)
    out = tmp_path / "run"
    run_generation(cfg, out, device="cpu", cpu_offload=True)
    saved = json.loads((out / "config.json").read_text())
    assert saved["deepfloyd_if"]["cpu_offload"] and saved["stable_diffusion"]["cpu_offload"]


def test_the_peak_resident_memory_is_the_runs_own():
    """A long-lived worker resets the high-water mark when a job starts, so the job's
    ``peak_memory_mb`` is not an earlier, bigger job's."""
    from stabledreamer.device import peak_rss_mb, reset_peak_rss

    if not reset_peak_rss():
        pytest.skip("this system cannot reset the peak (not Linux)")
    base = peak_rss_mb()
    big = bytearray(96 * 2**20)
    big[::4096] = b"x" * len(big[::4096])  # touch every page
    assert peak_rss_mb() >= base + 80
    del big
    assert reset_peak_rss() and peak_rss_mb() < base + 48
