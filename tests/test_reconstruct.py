"""The oracle reconstruction job end to end, on short runs: outputs, resume, bad input."""

import json

import pytest
import torch
import trimesh

from stabledreamer import gaussians as G
from stabledreamer.ply import load_ply
from stabledreamer.presets import get_preset
from stabledreamer.runs import trainer as trainer_mod
from stabledreamer.runs.checkpoint import load_checkpoint
from stabledreamer.runs.folder import PROCEDURAL_DEMO, RunDirError
from stabledreamer.runs.reconstruct import run_reconstruction
from stabledreamer.runs.trainer import TrainingCancelled, TrainingDiverged


def smoke(steps=4, target=PROCEDURAL_DEMO):
    cfg = get_preset("smoke")
    cfg.target = str(target)
    cfg.stages[0].steps = steps
    return cfg


def test_demo_writes_the_run_folder(tmp_path):
    out = tmp_path / "run"
    seen = []
    metrics = run_reconstruction(smoke(), out, callback=seen.append)
    for name in [
        "config.json",
        "gaussians.ply",
        "metrics.json",
        "turntable.png",
        "heldout.png",
        "target.glb",
        "checkpoints/last.pt",
    ]:
        assert (out / name).is_file(), name
    assert list((out / "debug").glob("*.png"))
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk["psnr_heldout"] == pytest.approx(metrics["psnr_heldout"])
    assert 0 < on_disk["psnr_heldout"] < 100 and len(on_disk["psnr_heldout_views"]) == 8
    assert on_disk["steps"] == 4 and on_disk["gaussians"] == G.count(
        load_ply(out / "gaussians.ply")
    )
    # progress reached the callback for every step, with an ETA that runs down to zero
    assert [p.global_step for p in seen] == [1, 2, 3, 4]
    assert seen[-1].eta_s == 0 and seen[0].stage == "reconstruct"
    assert set(seen[0].losses) >= {"sds", "total", "reg_scale", "reg_position"}


def test_refuses_existing_folder_unless_overwrite(tmp_path):
    out = tmp_path / "run"
    run_reconstruction(smoke(2), out)
    with pytest.raises(RunDirError, match="--overwrite"):
        run_reconstruction(smoke(2), out)
    run_reconstruction(smoke(2), out, overwrite=True)
    other = tmp_path / "notarun"
    other.mkdir()
    (other / "precious.txt").write_text("keep me")
    with pytest.raises(RunDirError, match="not a run folder"):
        run_reconstruction(smoke(2), other, overwrite=True)
    assert (other / "precious.txt").read_text() == "keep me"
    with pytest.raises(RunDirError, match="nothing to resume"):
        run_reconstruction(smoke(2), tmp_path / "empty", resume=True)


def test_cancel_then_resume_matches_uninterrupted(tmp_path):
    cfgs = [smoke(6) for _ in range(3)]
    for cfg in cfgs:
        cfg.device = "cpu"  # auto would pick CUDA on a GPU: gsplat's atomics are not bit-exact
    full = tmp_path / "full"
    run_reconstruction(cfgs[0], full)
    part = tmp_path / "part"
    with pytest.raises(TrainingCancelled):
        run_reconstruction(cfgs[1], part, callback=lambda p: p.global_step == 3)
    assert load_checkpoint(part)["step"] == 3
    assert not (part / "gaussians.ply").exists() and not (part / "metrics.json").exists()
    run_reconstruction(cfgs[2], part, resume=True)
    a, b = load_ply(full / "gaussians.ply"), load_ply(part / "gaussians.ply")
    for k in G.KEYS:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)


def test_nan_stops_with_clear_error_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    real = trainer_mod.regularization_losses
    calls = {"n": 0}

    def poisoned(params, cfg):
        calls["n"] += 1
        terms = real(params, cfg)
        if calls["n"] == 4:
            terms["reg_scale"] = terms["reg_scale"] * float("nan")
        return terms

    monkeypatch.setattr(trainer_mod, "regularization_losses", poisoned)
    out = tmp_path / "run"
    with pytest.raises(TrainingDiverged, match="resume"):
        run_reconstruction(smoke(6), out)
    ck = load_checkpoint(out)
    assert ck["step"] == 2  # smoke checkpoints every 2 steps; step 4 diverged
    assert all(torch.isfinite(v).all() for v in ck["params"].values())
    assert not (out / "gaussians.ply").exists()


def test_outputs_are_in_the_targets_frame(tmp_path):
    box = trimesh.creation.box(extents=(4.0, 2.0, 2.0))
    box.apply_translation((10.0, -3.0, 1.0))
    box.visual.face_colors = [200, 40, 40, 255]
    path = tmp_path / "box.ply"
    box.export(path)
    out = tmp_path / "run"
    run_reconstruction(smoke(2, target=path), out)
    g = load_ply(out / "gaussians.ply")
    centre = g["means"].mean(dim=0)
    assert torch.allclose(centre, torch.tensor([10.0, -3.0, 1.0]), atol=0.6)
    # the normalisation scaled the box's half-diagonal (~2.45) to 0.9: scales grow back by ~2.7x
    init_scale = torch.exp(g["scales"]).median()
    assert init_scale > 0.02


def test_the_stage_clock_starts_once_the_guidance_is_ready_for_the_first_step(
    tmp_path, monkeypatch
):
    """``prepare`` (a warm worker encodes the view prompts the first cameras need) runs before
    every step's render and, like model loading, before the stage clock starts: a slow first
    preparation does not count in ``elapsed_s`` or the ETA."""
    from types import SimpleNamespace

    from stabledreamer.guidance.oracle import OracleGuidance

    now = [0.0]
    monkeypatch.setattr(trainer_mod, "time", SimpleNamespace(perf_counter=lambda: now[0]))
    prepared = []

    def prepare(self, ctx):
        prepared.append(len(ctx.cameras))
        now[0] += 1000.0 if len(prepared) == 1 else 1.0

    monkeypatch.setattr(OracleGuidance, "prepare", prepare)
    seen = []
    run_reconstruction(smoke(3), tmp_path / "run", callback=seen.append)
    assert prepared == [smoke().camera.batch_size] * 3
    assert [p.elapsed_s for p in seen] == [0.0, 1.0, 2.0]
