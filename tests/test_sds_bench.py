"""``bench/sds_step.py``: its tiny path runs end to end, and the full-size architectures have the
FLOPs the issue's floors assume (counted on ``meta``: nothing is computed)."""

import importlib.util
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "sds_step.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("sds_step_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tiny_path_times_every_phase(bench, tmp_path):
    rows = bench.run_tiny(views=1, n_gaussians=300, steps=1, sd_resolution=64,
                          model_dir=str(tmp_path))  # fmt: skip
    assert [r["stage"] for r in rows] == ["geometry (tiny IF)", "detail (tiny SD)"]
    for r in rows:
        for key in ("render", "text", "unet", "vae", "backward", "step"):
            assert r[key] >= 0.0, key
        assert r["step"] >= r["unet"] > 0 and r["flops"] > 0
    lines = bench.table(rows, peak_tflops=989.0).splitlines()
    assert len(lines) == 4 and all(line.count("|") == 14 for line in lines)


def test_full_size_flops_match_the_published_floors(bench):
    f = bench.full_size_flops(views=1, sd_res=512)
    assert f["if_unet"] / 1e12 == pytest.approx(5.8, rel=0.02)  # IF-I-XL, guided, 64²
    assert f["sd_unet"] / 1e12 == pytest.approx(1.6, rel=0.02)  # SD 2.1-base, guided, 64² latent
    assert f["sd_vae"] / 1e12 == pytest.approx(2.3, rel=0.03)  # VAE encoder fwd+bwd, 512²
