"""``stabledreamer doctor``: each check's verdict, its fix, and the exit code (it can fail)."""

import json

import pytest
import torch

from stabledreamer.cli import main
from stabledreamer.doctor.checks import FAIL, OK, DoctorConfig, run_checks
from stabledreamer.guidance.tiny_models import save_tiny_models


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny")
    save_tiny_models(d)
    return d


@pytest.fixture(autouse=True)
def _offline_without_token(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)


def doctor(capsys, *argv):
    code = main(["doctor", "--json", "--no-build", *argv])
    checks = {c["name"]: c for c in json.loads(capsys.readouterr().out)}
    return code, checks


def test_tiny_models_on_the_cpu_pass(tiny, tmp_path, capsys):
    code, checks = doctor(
        capsys, "--if-model", str(tiny / "if"), "--sd-model", str(tiny / "sd"),
        "--device", "cpu", "--out", str(tmp_path / "runs"),
    )  # fmt: skip
    assert code == 0, checks
    assert not [c for c in checks.values() if c["status"] == FAIL]
    assert checks["if model"]["status"] == checks["sd model"]["status"] == OK
    assert "skipped" in checks["gsplat cuda"]["detail"]
    assert "not measured" in checks["gpu memory"]["detail"]
    assert checks["hub token"]["status"] == OK  # local folders need none
    assert checks["cpu rasteriser"]["status"] in ("OK", "WARN")


def test_missing_model_folder_fails_with_its_fix(tiny, tmp_path, capsys):
    missing = tmp_path / "nowhere" / "if"
    code, checks = doctor(
        capsys, "--if-model", str(missing), "--sd-model", str(tiny / "sd"), "--device", "cpu"
    )
    assert code == 1
    c = checks["if model"]
    assert c["status"] == FAIL and "does not exist" in c["detail"]
    assert "tiny-models" in c["fix"] and "hf download" in c["fix"]
    assert checks["sd model"]["status"] == OK


def test_folder_that_is_not_a_pipeline_fails(tiny, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    code, checks = doctor(
        capsys, "--if-model", str(tiny / "if"), "--sd-model", str(empty), "--device", "cpu"
    )
    assert code == 1
    assert checks["sd model"]["status"] == FAIL
    assert "model_index.json" in checks["sd model"]["detail"]


def test_hub_id_offline_and_not_cached_fails(tiny, capsys):
    code, checks = doctor(
        capsys, "--if-model", "DeepFloyd/IF-I-XL-v1.0", "--sd-model", str(tiny / "sd"),
        "--device", "cpu",
    )  # fmt: skip
    assert code == 1
    c = checks["if model"]
    assert c["status"] == FAIL and "HF_HUB_OFFLINE" in c["detail"]
    assert "hf download DeepFloyd/IF-I-XL-v1.0" in c["fix"]
    token = checks["hub token"]
    assert token["status"] == FAIL and "hf auth login" in token["fix"]  # gated, no token set
    assert "downloads need about" in checks["disk (model cache)"]["detail"]


def _fake_cache(root, repo_id, files):
    """The hub cache's layout: refs/main names a snapshot holding the files."""
    repo = root / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    for name in files:
        path = repo / "snapshots" / ("0" * 40) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("{}")


def test_models_in_the_hub_cache_are_found(tiny, tmp_path):
    _fake_cache(tmp_path, "DeepFloyd/IF-I-XL-v1.0",
                ["model_index.json", "unet/diffusion_pytorch_model.fp16.safetensors"])  # fmt: skip
    _fake_cache(tmp_path, "owner/index-only", ["model_index.json"])  # no UNet weights
    cfg = DoctorConfig(
        if_model="DeepFloyd/IF-I-XL-v1.0", sd_model="owner/index-only", device="cpu",
        out=str(tmp_path), hf_cache=str(tmp_path),
    )  # fmt: skip
    checks = {c.name: c for c in run_checks(cfg)}
    assert checks["if model"].status == OK and "cache" in checks["if model"].detail
    assert checks["hub token"].status == OK  # not needed while the gated model is cached
    assert checks["sd model"].status == FAIL  # half a download is not a model


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is present here")
def test_a_real_run_without_cuda_fails(tiny, capsys):
    code = main(["doctor", "--no-build", "--if-model", str(tiny / "if"),
                 "--sd-model", str(tiny / "sd")])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 1
    assert "[FAIL] cuda" in out and "fix:" in out and "not ready" in out


def test_bad_device_name_fails(tiny, capsys):
    code, checks = doctor(capsys, "--if-model", str(tiny / "if"), "--device", "gpu0")
    assert code == 1 and checks["cuda"]["status"] == FAIL


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gsplat_builds_and_matches_the_cpu_renderer(tiny, tmp_path):
    cfg = DoctorConfig(if_model=str(tiny / "if"), sd_model=str(tiny / "sd"), out=str(tmp_path))
    checks = {c.name: c for c in run_checks(cfg)}
    assert checks["cuda"].status == OK
    assert checks["gsplat cuda"].status == OK, checks["gsplat cuda"]


def test_a_set_without_deepfloyd_needs_neither_if_nor_a_token(tiny, capsys):
    """``doctor --models sd-only``: the IF model and the hub token are not needed."""
    code, checks = doctor(capsys, "--models", "sd-only", "--sd-model", str(tiny / "sd"),
                          "--device", "cpu")  # fmt: skip
    assert checks["if model"]["status"] == OK and "not used" in checks["if model"]["detail"]
    assert checks["hub token"]["status"] == OK and checks["sd model"]["status"] == OK
    code, checks = doctor(capsys, "--models", "if-sd", "--sd-model", str(tiny / "sd"),
                          "--device", "cpu")  # fmt: skip
    assert checks["if model"]["status"] == FAIL  # the IF id, not in this offline cache
