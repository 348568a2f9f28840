"""Refine and continue a finished text run (``runs.followup``, ``generate --refine/--continue``),
with tiny random IF-like and SD-like models."""

import json

import pytest
import torch

from stabledreamer.cli import main
from stabledreamer.guidance.tiny_models import save_tiny_models
from stabledreamer.optim.sds import t_max_at
from stabledreamer.presets import get_preset
from stabledreamer.runs import generate as generate_mod
from stabledreamer.runs.checkpoint import load_checkpoint
from stabledreamer.runs.followup import FollowUp, FollowUpError, prepare_followup, run_followup
from stabledreamer.runs.generate import run_generation
from stabledreamer.runs.trainer import TrainingCancelled


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
    cfg.eval_resolution, cfg.checkpoint_every, cfg.debug_every = 32, 1, 0
    cfg.mesh.enabled = False
    return cfg


@pytest.fixture(scope="module")
def parent(tmp_path_factory):
    """A finished two-stage run (3 geometry + 2 detail steps) and the tiny models."""
    root = tmp_path_factory.mktemp("followup")
    tiny = root / "tiny"
    save_tiny_models(tiny)
    run_generation(small_config(tiny), root / "parent")
    return root / "parent", tiny


def final_params(run_dir):
    return load_checkpoint(run_dir)["params"]


def test_refine_skips_stage_1_and_starts_from_the_parents_gaussians(parent, tmp_path, monkeypatch):
    parent_dir, _ = parent
    built = []
    real = generate_mod.build_guidance

    def spy(cfg, stage, device=None):
        built.append((stage.name, cfg.prompt, cfg.stable_diffusion.negative_prompt))
        return real(cfg, stage, device)

    monkeypatch.setattr(generate_mod, "build_guidance", spy)
    seen = []

    def record(p):
        seen.append((p.stage, p.step, p.params["means"].detach().clone(), p.gaussians))

    f = FollowUp("refine", parent_dir, prompt="a blue chair", negative="blurry", seed=7)
    metrics = run_followup(f, tmp_path / "refine", callback=record)
    before = final_params(parent_dir)
    assert built == [("detail", "a blue chair", "blurry")]  # no geometry stage, no IF model
    assert [(s, k) for s, k, _, _ in seen] == [("detail", 1), ("detail", 2)]
    # geometry kept: positions after the first refine step (and the last) are the parent's
    assert torch.equal(seen[0][2], before["means"])
    assert torch.equal(seen[-1][2], before["means"])
    assert seen[0][3] == len(before["means"])  # nothing densified or pruned
    after = final_params(tmp_path / "refine")
    assert not torch.equal(after["sh0"], before["sh0"])  # colour redone
    assert metrics["mode"] == "refine" and metrics["parent"] == str(parent_dir.resolve())
    assert metrics["prompt"] == "a blue chair" and metrics["steps"] == 2
    saved = json.loads((tmp_path / "refine" / "metrics.json").read_text())
    assert saved["mode"] == "refine" and saved["parent_prompt"] == "a red chair"
    cfg = json.loads((tmp_path / "refine" / "config.json").read_text())
    assert [s["name"] for s in cfg["stages"]] == ["detail"] and cfg["seed"] == 7


def test_continue_adds_steps_held_at_the_final_noise_level(parent, tmp_path):
    parent_dir, _ = parent
    parent_cfg = json.loads((parent_dir / "config.json").read_text())
    noise = get_preset("preview").stages[1].noise
    noise.t_max_start = parent_cfg["stages"][1]["noise"]["t_max_start"]
    noise.t_max_end = parent_cfg["stages"][1]["noise"]["t_max_end"]
    end = t_max_at(noise, 1.0)
    f = FollowUp("continue", parent_dir, steps=4)
    cfg = prepare_followup(f, tmp_path / "cont")
    stage = cfg.stages[0]
    assert (stage.name, stage.steps) == ("detail", 4)
    assert stage.noise.schedule == "constant"
    assert stage.noise.t_max_start == stage.noise.t_max_end == pytest.approx(end)
    assert stage.lr.means == stage.lr.means_final == parent_cfg["stages"][1]["lr"]["means_final"]
    # the first checkpoint is the parent's final state, Adam moments included
    start, before = load_checkpoint(tmp_path / "cont"), load_checkpoint(parent_dir)
    assert (start["stage_index"], start["step"]) == (0, 0)
    assert torch.equal(start["params"]["means"], before["params"]["means"])
    assert torch.equal(
        start["optimizers"]["sh0"]["state"][0]["exp_avg"],
        before["optimizers"]["sh0"]["state"][0]["exp_avg"],
    )
    seen = []
    metrics = run_followup(None, tmp_path / "cont", resume=True, callback=seen.append)
    assert [(p.stage, p.step) for p in seen] == [("detail", k) for k in range(1, 5)]
    top = max(int(end * seen[0].num_train_timesteps), int(0.02 * seen[0].num_train_timesteps) + 1)
    assert all(t <= top for p in seen for t in p.t)  # never above the held level
    assert metrics["steps"] == 4 and metrics["mode"] == "continue"


def test_bad_parents_are_refused(parent, tmp_path):
    parent_dir, tiny = parent
    with pytest.raises(FollowUpError, match="not a run folder") as e:
        prepare_followup(FollowUp("refine", tmp_path / "nothing"), tmp_path / "a")
    assert e.value.code == "unknown_parent"
    # a reconstruction is not a text run
    recon = tmp_path / "recon"
    recon.mkdir()
    cfg = get_preset("smoke")
    from stabledreamer.atomic import write_json
    from stabledreamer.config import to_dict

    write_json(recon / "config.json", to_dict(cfg))
    with pytest.raises(FollowUpError, match="reconstruction") as e:
        prepare_followup(FollowUp("continue", recon, steps=1), tmp_path / "b")
    assert e.value.code == "unsupported"
    # a run stopped in its first stage is not finished
    stopped = tmp_path / "stopped"
    with pytest.raises(TrainingCancelled):
        run_generation(small_config(tiny), stopped, callback=lambda p: p.step == 2)
    with pytest.raises(FollowUpError, match="not finished") as e:
        prepare_followup(FollowUp("refine", stopped, prompt="x"), tmp_path / "c")
    assert e.value.code == "parent_not_done"
    with pytest.raises(FollowUpError, match="steps") as e:
        prepare_followup(FollowUp("continue", parent_dir), tmp_path / "d")
    assert e.value.code == "bad_field"
    for name in "abcd":
        assert not (tmp_path / name).exists()  # nothing written


def test_cli_refine_and_continue(parent, tmp_path, capsys):
    parent_dir, _ = parent
    out = tmp_path / "cli-refine"
    assert main(["generate", "a green chair", "--refine", str(parent_dir), "--steps", "1",
                 "--out", str(out), "--quiet", "--device", "cpu"]) == 0  # fmt: skip
    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["mode"], metrics["prompt"], metrics["steps"]) == ("refine", "a green chair", 1)
    out2 = tmp_path / "cli-continue"
    args = ["generate", "--continue", str(out), "--steps", "2", "--out", str(out2), "--quiet"]
    assert main(args) == 0
    metrics = json.loads((out2 / "metrics.json").read_text())
    assert (metrics["mode"], metrics["prompt"], metrics["steps"]) == (
        "continue",
        "a green chair",
        2,
    )
    assert main(["generate", "--continue", str(parent_dir), "--out", str(tmp_path / "x")]) == 2
    assert "steps" in capsys.readouterr().err
