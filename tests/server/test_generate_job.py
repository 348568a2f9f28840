"""A text-to-3D job through the service, with tiny random models named at ``serve`` time."""

from __future__ import annotations

import json

import numpy as np
from server_helpers import FAST_TEXT, make_keys

from stabledreamer.guidance.tiny_models import save_tiny_models
from stabledreamer_protocol import Error
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
    overrides = {**FAST_TEXT, "geometry.steps": 2, "detail.steps": 2}
    with s.client() as c:
        hello = c.handshake(timeout_s=10)
        assert any(m.startswith("if:") for m in hello.models)
        # Refusals first: initial points with a reconstruction, or not finite.
        points = np.random.default_rng(0).uniform(-0.5, 0.5, (300, 3)).astype(np.float32)
        colors = np.tile(np.float32([[0.9, 0.1, 0.1]]), (300, 1))
        bad = [
            c.submit(target_format="demo", init_points=points),
            c.submit("a red chair", init_points=points * np.float32("nan")),
        ]
        codes = {}
        for j in bad:
            e = c.wait_for(lambda m, j=j: isinstance(m, Error) and m.job == j, 10)
            assert e is not None, s.log()
            codes[j] = e.code
        assert list(codes.values()) == ["unsupported", "bad_field"]
        # A text job that starts from a blockout's points (the add-on's "start from selected").
        job = c.submit(
            "a red chair",
            preset="preview",
            seed=3,
            overrides=overrides,
            init_points=points,
            init_colors=colors,
        )
        hit = c.wait_for(lambda e: isinstance(e, ResultDownloaded) and e.job == job, 120)
        assert hit is not None, s.log()
        run = tmp_path / "state" / "jobs" / f"j-{job}"
        config = json.loads((run / "run" / "config.json").read_text())
        assert config["init_from"] == str(run / "init.ply")
        assert (run / "init.ply").read_bytes().startswith(b"ply")
        metrics = json.loads(hit.files["metrics.json"])
        assert metrics["prompt"] == "a red chair" and metrics["steps"] == 4
        assert set(metrics["stages"]) == {"geometry", "detail"}
        assert hit.files["gaussians.ply"].startswith(b"ply")
