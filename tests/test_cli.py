"""The command line: the console script runs, bad input gives one clear line and a non-zero exit."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from stabledreamer.cli import main


def test_console_script_demo_smoke(tmp_path):
    exe = shutil.which("stabledreamer") or os.path.join(
        os.path.dirname(sys.executable), "stabledreamer"
    )
    out = tmp_path / "demo"
    r = subprocess.run(
        [exe, "demo", "--preset", "smoke", "--out", str(out), "--quiet"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert "psnr_heldout" in r.stdout
    assert json.loads((out / "metrics.json").read_text())["steps"] == 4


@pytest.mark.parametrize(
    "argv, message",
    [
        (["reconstruct", "nope.glb", "--out", "{tmp}/a"], "no such file"),
        (["reconstruct", "--out", "{tmp}/a"], "give the target mesh"),
        (["demo", "--out", "{tmp}/a", "--steps", "0"], "--steps must be a positive"),
        (["demo", "--out", "{tmp}/a", "--steps", "-3"], "--steps must be a positive"),
        (["demo", "--out", "{tmp}/a", "--preset", "huge"], "unknown preset"),
        (["reconstruct", "--out", "{tmp}/nothing", "--resume"], "nothing to resume"),
        (["reconstruct", "--resume", "{tmp}/nothing"], "nothing to resume"),
        (["reconstruct", "x.glb"], "give the run folder"),
    ],
)
def test_bad_input(tmp_path, capsys, argv, message):
    code = main([a.format(tmp=tmp_path) for a in argv])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "a").exists()


def test_bad_meshes(tmp_path, capsys):
    empty = tmp_path / "empty.obj"
    empty.write_text("# no faces\nv 0 0 0\nv 1 0 0\n")
    junk = tmp_path / "junk.glb"
    junk.write_bytes(b"\x00garbage")
    for path in (empty, junk):
        assert main(["reconstruct", str(path), "--out", str(tmp_path / "r"), "--quiet"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("stabledreamer: error:") and str(path.name) in err
    # nothing was left that a later run would mistake for a result
    assert not (tmp_path / "r" / "gaussians.ply").exists()
    assert not (tmp_path / "r" / "metrics.json").exists()


def test_existing_out_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["demo", "--preset", "smoke", "--out", str(out), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["demo", "--preset", "smoke", "--out", str(out), "--quiet"]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_resume_run_dir_continues_a_cancelled_run(tmp_path, capsys):
    from stabledreamer.presets import get_preset
    from stabledreamer.runs.reconstruct import PROCEDURAL_DEMO, run_reconstruction
    from stabledreamer.runs.trainer import TrainingCancelled

    cfg = get_preset("smoke")
    cfg.target = PROCEDURAL_DEMO
    out = tmp_path / "run"
    with pytest.raises(TrainingCancelled):
        run_reconstruction(cfg, out, callback=lambda p: p.global_step == 2)
    assert main(["reconstruct", "--resume", str(out), "--quiet"]) == 0
    assert json.loads((out / "metrics.json").read_text())["steps"] == 4


def test_tiny_models_command_writes_the_fp16_variant(tmp_path, capsys):
    assert main(["tiny-models", str(tmp_path / "m"), "--variant", "fp16"]) == 0
    assert "SD-like" in capsys.readouterr().out
    unet = tmp_path / "m" / "sd" / "unet"
    assert (unet / "diffusion_pytorch_model.fp16.safetensors").is_file()
    assert (unet / "diffusion_pytorch_model.safetensors").is_file()
