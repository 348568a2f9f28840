"""A text-to-3D job through the service, with tiny random models named at ``serve`` time."""

from __future__ import annotations

import json

from server_helpers import make_keys

from stabledreamer.tiny_models import save_tiny_models
from stabledreamer_protocol.client import ResultDownloaded


def test_text_job_runs_with_the_services_models(tmp_path, make_server):
    tiny = tmp_path / "tiny"
    save_tiny_models(tiny)
    keys = tmp_path / "keys"
    make_keys(keys)
    s = make_server(
        tmp_path / "state", keys, "--if-model", str(tiny / "if"), "--sd-model", str(tiny / "sd")
    )
    s.wait_ready()
    overrides = {
        "geometry.steps": 2,
        "detail.steps": 2,
        "detail.resolution": 64,
        "stable_diffusion.resolution": 64,
        "init.num_points": 200,
        "camera.batch_size": 2,
        "eval_resolution": 32,
        "mesh.grid": 32,
        "mesh.faces": 2000,
        "mesh.texture_size": 64,
        "mesh.views": 4,
        "mesh.view_resolution": 32,
    }
    with s.client() as c:
        hello = c.handshake(timeout_s=10)
        assert any(m.startswith("if:") for m in hello.models)
        job = c.submit("a red chair", preset="preview", seed=3, overrides=overrides)
        hit = c.wait_for(lambda e: isinstance(e, ResultDownloaded) and e.job == job, 120)
        assert hit is not None, s.log()
        metrics = json.loads(hit.files["metrics.json"])
        assert metrics["prompt"] == "a red chair" and metrics["steps"] == 4
        assert set(metrics["stages"]) == {"geometry", "detail"}
        assert hit.files["gaussians.ply"].startswith(b"ply")
