"""Text to 3D end to end with tiny random IF-like and SD-like models (the real loading code)."""

import json

import pytest

from stabledreamer.cli import main
from stabledreamer.guidance.tiny_models import save_tiny_models
from stabledreamer.mesh.config import MeshConfig
from stabledreamer.presets import get_preset
from stabledreamer.runs.generate import run_generation
from stabledreamer.runs.trainer import TrainingCancelled


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny")
    save_tiny_models(d, variant="fp16")  # fp32 and fp16 files, as IF-I-XL and SD 2.1 ship them
    return d


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def small_config(tiny, prompt="a red chair"):
    cfg = get_preset("preview")
    cfg.prompt = prompt
    cfg.deepfloyd_if.model = str(tiny / "if")
    cfg.stable_diffusion.model = str(tiny / "sd")
    cfg.init.num_points = 300
    cfg.camera.batch_size = 2
    cfg.stages[0].steps, cfg.stages[1].steps = 3, 2
    cfg.stages[1].resolution = cfg.stable_diffusion.resolution = 64
    cfg.eval_resolution, cfg.checkpoint_every, cfg.debug_every = 32, 1, 2
    cfg.mesh = MeshConfig(faces=2000, texture_size=64, grid=32, views=4, view_resolution=32)
    return cfg


def test_two_stages_write_the_run_folder(tiny, tmp_path):
    out = tmp_path / "run"
    seen = []
    cfg = small_config(tiny)
    cfg.stable_diffusion.vae_gradient_checkpointing = True  # CUDA's default, here on the CPU
    metrics = run_generation(cfg, out, callback=seen.append)
    assert [(p.stage, p.step) for p in seen] == [
        ("geometry", 1),
        ("geometry", 2),
        ("geometry", 3),
        ("detail", 1),
        ("detail", 2),
    ]
    for name in (
        "config.json",
        "gaussians.ply",
        "turntable.png",
        "metrics.json",
        "checkpoints/last.pt",
    ):
        assert (out / name).is_file(), name
    assert (out / "mesh.glb").is_file() or "mesh_error" in metrics
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk["steps"] == 5 and set(on_disk["stages"]) == {"geometry", "detail"}
    assert on_disk["stages"]["detail"]["seconds_per_step"] > 0
    assert on_disk["peak_memory_mb"] > 0
    assert list((out / "debug").glob("geometry_*.png")) and list((out / "debug").glob("detail_*"))


def test_resume_across_the_stage_boundary(tiny, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(TrainingCancelled):
        run_generation(small_config(tiny), out, callback=lambda p: p.stage == "detail")
    metrics = run_generation(None, out, resume=True)
    assert metrics["steps"] == 5 and list(metrics["stages"]) == ["detail"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["generate", "", "--out", "{tmp}/a"], "the prompt is empty"),
        (["generate", "x" * 3000, "--out", "{tmp}/a"], "keep it under"),
        (["generate", "a cat", "--out", "{tmp}/a", "--preset", "reconstruct"], "unknown preset"),
        (
            ["generate", "a cat", "--out", "{tmp}/a", "--steps-stage2", "0"],
            "--steps-stage2 0: 0 is outside",
        ),
        (["generate", "a cat", "--out", "{tmp}/a", "--init", "{tmp}/none.ply"], "no such file"),
        (["generate", "a cat", "--out", "{tmp}/a", "--if-model", "{tmp}/missing"], "missing"),
    ],
)
def test_bad_input(tmp_path, capsys, argv, message):
    code = main([a.format(tmp=tmp_path) for a in argv] + ["--quiet"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert message in err
    assert not (tmp_path / "a" / "gaussians.ply").exists()


def test_init_from_point_cloud_mesh_and_3dgs(tmp_path):
    import numpy as np
    import torch
    import trimesh

    from stabledreamer import gaussians as G
    from stabledreamer.ply import save_ply
    from stabledreamer.runs.generate import initial_gaussians

    pc = trimesh.PointCloud(
        np.random.default_rng(0).random((100, 3)) * 0.5, colors=np.tile([255, 0, 0, 255], (100, 1))
    )
    pc.export(tmp_path / "pc.ply")
    trimesh.creation.box(extents=(1, 1, 1)).export(tmp_path / "box.obj")
    splats = G.init_ball(G.InitConfig(num_points=50), torch.Generator().manual_seed(0))
    save_ply(splats, tmp_path / "g.ply")
    cfg = get_preset("preview")
    cfg.init.num_points = 200
    cfg.init_from = str(tmp_path / "pc.ply")
    g = initial_gaussians(cfg)
    assert g["means"].shape == (100, 3)
    torch.testing.assert_close(G.activated(g)["rgb"][0], torch.tensor([1.0, 0.0, 0.0]))
    cfg.init_from = str(tmp_path / "box.obj")
    g = initial_gaussians(cfg)
    assert torch.allclose(g["means"].abs().max(dim=-1).values, torch.tensor(0.5), atol=1e-4)
    cfg.init_from = str(tmp_path / "g.ply")
    torch.testing.assert_close(initial_gaussians(cfg)["means"], splats["means"])
    cfg.init_from = "sphere"
    assert initial_gaussians(cfg) is None
