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
        (["demo", "--out", "{tmp}/a", "--steps", "0"], "--steps 0: 0 is outside the range [1,"),
        (["demo", "--out", "{tmp}/a", "--steps", "-3"], "--steps -3: -3 is outside the range"),
        (["demo", "--out", "{tmp}/a", "--set", "camera.batch_size=0"], "camera.batch_size: 0 is"),
        (["demo", "--out", "{tmp}/a", "--set", "threads=300"], "threads: 300 is outside"),
        (["demo", "--out", "{tmp}/a", "--set", "stages.0.steps"], "write KEY=VALUE"),
        (["demo", "--out", "{tmp}/a", "--set", "oracle.mode=great"], "must be one of perfect"),
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


def test_options_and_set_pairs_take_the_one_config_path():
    """Options and ``--set KEY=VALUE`` (JSON values, later wins) become overrides of the preset
    through ``presets.resolve``, the path the service takes too."""
    from stabledreamer.cli import _config_from_args, build_parser

    args = build_parser().parse_args(
        ["demo", "--steps", "9", "--schedule", "sqrt", "--set", "camera.batch_size=2",
         "--set", "camera.distance=[2.0, 3.0]", "--set", "reconstruct.steps=11",
         "--set", "oracle.mode=imperfect"]
    )  # fmt: skip
    cfg = _config_from_args(args)
    assert cfg.stages[0].steps == 11 and cfg.stages[0].noise.schedule == "sqrt"
    assert cfg.camera.batch_size == 2 and cfg.camera.distance == (2.0, 3.0)
    assert cfg.oracle.mode == "imperfect" and cfg.target == "procedural:demo"


def test_only_stabledreamer_errors_are_user_errors(monkeypatch, capsys):
    """A StableDreamerError is one line and exit code 2; any other exception is a bug and keeps
    its traceback (a numpy shape bug is not reported as the user's mistake)."""
    import stabledreamer.cli as cli
    from stabledreamer.errors import StableDreamerError

    def user_error(args):
        raise StableDreamerError("the fix is to do X")

    def bug(args):
        raise ValueError("operands could not be broadcast together")

    monkeypatch.setattr(cli, "cmd_keys", user_error)
    assert cli.main(["keys", "/tmp/none"]) == 2
    assert capsys.readouterr().err == "stabledreamer: error: the fix is to do X\n"
    monkeypatch.setattr(cli, "cmd_keys", bug)
    with pytest.raises(ValueError, match="broadcast"):
        cli.main(["keys", "/tmp/none"])
