"""generate --prior: the text recipe on the example-based prior, scored against ground truth."""

from __future__ import annotations

import json

import pytest
import trimesh

from stabledreamer.cli import main
from stabledreamer.guidance.prior_bank import BankBuildConfig, BankObject, build_bank
from stabledreamer.mesh.config import MeshConfig
from stabledreamer.presets import get_preset
from stabledreamer.runs.generate import run_generation
from stabledreamer.targets.catalogue import target_mesh


@pytest.fixture(scope="module")
def bank_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("prior") / "bank"
    objects = [(BankObject(p, p == "a robot", "catalogue"), target_mesh(p)) for p in
               ("a robot", "a traffic cone")]  # fmt: skip
    return build_bank(objects, out, BankBuildConfig(views=12, resolutions=(16, 32), supersample=1),
                      log=lambda *_: None)  # fmt: skip


def small_toy(bank_dir, prompt="a robot"):
    cfg = get_preset("toy")
    cfg.prompt = prompt
    cfg.example_prior.bank = str(bank_dir)
    cfg.init.num_points = 300
    cfg.camera.batch_size = 2
    cfg.stages[0].steps, cfg.stages[1].steps = 3, 2
    cfg.stages[0].resolution, cfg.stages[1].resolution = 16, 32
    cfg.eval_resolution, cfg.checkpoint_every, cfg.debug_every = 32, 10, 2
    cfg.mesh = MeshConfig(faces=2000, texture_size=64, grid=32, views=4, view_resolution=32)
    cfg.mesh.chamfer_samples, cfg.mesh.chamfer_views, cfg.mesh.chamfer_resolution = 500, 6, 48
    return cfg


def test_short_run_writes_ground_truth_metrics(bank_dir, tmp_path):
    out = tmp_path / "run"
    metrics = run_generation(small_toy(bank_dir), out)
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["prompt"] == "a robot" and len(saved["psnr_heldout_views"]) == 8
    assert 3.0 < saved["psnr_heldout"] < 60.0
    assert "multi_face" in saved  # the robot has a front
    assert "chamfer" in saved or "mesh_error" in saved
    assert metrics["stages"].keys() == {"geometry", "detail"}
    for name in ("gaussians.ply", "heldout.png", "turntable.png", "debug/geometry_000002.png"):
        assert (out / name).is_file(), name


def test_no_front_no_multi_face_score(bank_dir, tmp_path):
    cfg = small_toy(bank_dir, "a traffic cone")
    cfg.mesh.enabled = False
    cfg.stages = cfg.stages[:1]
    metrics = run_generation(cfg, tmp_path / "run")
    assert "psnr_heldout" in metrics and "multi_face" not in metrics


def test_cli_generate_prior_prints_the_scores(bank_dir, tmp_path, capsys, monkeypatch):
    from stabledreamer import presets

    small = small_toy(bank_dir)
    monkeypatch.setitem(presets.OFFLINE_PRESETS, "toy", lambda: small)
    out = tmp_path / "run"
    argv = ["generate", "a robot", "--prior", str(bank_dir), "--out", str(out), "--quiet",
            "--steps-stage1", "2", "--steps-stage2", "1"]  # fmt: skip
    assert main(argv) == 0
    said = capsys.readouterr().out
    assert "against the true object: psnr_heldout" in said and "multi_face" in said
    config = json.loads((out / "config.json").read_text())
    assert config["example_prior"]["bank"] == str(bank_dir.resolve())
    assert [s["steps"] for s in config["stages"]] == [2, 1]


def test_cli_refuses_a_prompt_the_bank_does_not_hold(bank_dir, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["generate", "a teapot", "--prior", str(bank_dir), "--out", str(out)])
    assert code == 2
    err = capsys.readouterr().err
    assert '"a teapot" is not one of' in err and '"a robot"; "a traffic cone"' in err
    assert not out.exists()  # refused before anything was written


def test_cli_prior_build_from_a_mesh(tmp_path, capsys):
    mesh = trimesh.creation.box(extents=(1.0, 0.5, 0.8))
    mesh.visual.face_colors = [200, 40, 40, 255]
    path = tmp_path / "brick.ply"
    mesh.export(str(path))
    out = tmp_path / "bank"
    argv = ["prior", "build", str(out), "--object", f"a red brick={path}", "--front",
            "a red brick", "--views", "6", "--resolution", "8", "16"]  # fmt: skip
    assert main(argv) == 0
    header = json.loads((out / "bank.json").read_text())
    assert header["objects"][0]["prompt"] == "a red brick" and header["objects"][0]["has_front"]
    assert main(argv) == 2  # exists: needs --overwrite
    assert "--overwrite" in capsys.readouterr().err
    assert main(["prior", "build", str(tmp_path / "b2"), "--object", "no-equals-sign"]) == 2


def test_multi_face_score_sign():
    """The true object scores negative (no second face); an object whose back shows the
    mirrored front (a Janus) scores positive."""
    import torch

    from stabledreamer.cameras import heldout_cameras, orbit_cameras
    from stabledreamer.runs.prior_metrics import multi_face_score
    from stabledreamer.targets.raster import render_mesh

    mesh = target_mesh("a toy creature")
    cams = heldout_cameras(32, 32)
    truth, _ = render_mesh(mesh, cams, torch.ones(3), supersample=2)
    assert multi_face_score(truth, cams, truth, mesh) < -10.0
    janus = truth.clone()
    for k, az in enumerate(cams.azimuth_deg.tolist()):
        if 135.0 <= az <= 225.0:  # the back views show the front, mirrored
            front = orbit_cameras([180.0 - az], [20.0], 2.5, 49.0, 32, 32)
            janus[k] = render_mesh(mesh, front, torch.ones(3), supersample=2)[0][0].flip(dims=[1])
    assert multi_face_score(janus, cams, truth, mesh) > 10.0


def test_toy_prior_calls_views_above_40_degrees_overhead(bank_dir):
    """The toy preset narrows the prior's side bucket to -10..40 deg (bench/toy_text_to_3d.py
    --study overhead): a camera at 50 deg gets the overhead examples, one at 30 deg the side's."""
    import torch

    from stabledreamer.cameras import orbit_cameras
    from stabledreamer.guidance.base import GuidanceContext
    from stabledreamer.guidance.example_prior import ExamplePriorGuidance
    from stabledreamer.guidance.prior_bank import open_bank
    from stabledreamer.guidance.prompts import VIEWS

    cfg = small_toy(bank_dir)
    g = ExamplePriorGuidance(cfg.prompt, open_bank(cfg.example_prior.bank), cfg.example_prior, 16)
    cams = orbit_cameras(torch.tensor([90.0, 90.0, 90.0]), torch.tensor([30.0, 50.0, 70.0]),
                         2.5, 49.0, 16, 16)  # fmt: skip
    ctx = GuidanceContext(cameras=cams, background=torch.ones(3, 3), step=0)
    assert [VIEWS[i] for i in g.buckets_of(ctx).tolist()] == ["side", "overhead", "overhead"]
