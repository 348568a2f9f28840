"""``SubmitCheck``: a submit message to a job record and its files, or a clear refusal."""

from __future__ import annotations

import io

import numpy as np
import pytest
from server_helpers import FAST, TARGET

from stabledreamer.server.jobs import JobStore
from stabledreamer.server.submit import SubmitCheck
from stabledreamer_protocol import DEFAULT_LIMITS, Limits, ProtocolError, Submit


def check(store, limits=DEFAULT_LIMITS, **fields):
    msg = Submit(job=fields.pop("job", "j1"), **fields)
    return SubmitCheck(limits, store).check(msg, msg.digest())


def test_a_reconstruction_keeps_its_upload(tmp_path):
    new = check(JobStore(tmp_path), target_format="ply", target_file=TARGET, preset="smoke",
                seed=4, overrides=FAST)  # fmt: skip
    rec = new.record
    assert (rec.kind, rec.preset, rec.seed, rec.target_file) == (
        "reconstruct",
        "smoke",
        4,
        "target.ply",
    )
    assert new.files == {"target.ply": TARGET.tobytes()}


def test_text_job_with_init_points(tmp_path):
    pts = np.zeros((5, 3), np.float32)
    new = check(JobStore(tmp_path), prompt="a teapot", init_points=pts)
    assert new.record.kind == "generate" and new.record.preset == "standard"
    assert new.record.init_file == "init.npz"
    with np.load(io.BytesIO(new.files["init.npz"])) as z:
        assert z["points"].shape == (5, 3)


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"prompt": "  "}, "bad_field"),
        ({"target_format": "stl", "target_file": TARGET}, "unsupported"),
        (
            {
                "target_format": "ply",
                "target_file": TARGET,
                "init_points": np.zeros((2, 3), np.float32),
            },
            "unsupported",
        ),
        ({"prompt": "x", "init_points": np.full((2, 3), np.nan, np.float32)}, "bad_field"),
        ({"prompt": "x", "preset": "smoke"}, "unknown_preset"),
        ({"target_format": "demo", "preset": "standard"}, "unknown_preset"),
        ({"target_format": "demo", "preset": "smoke", "overrides": {"nope": 1}}, "bad_override"),
    ],
)
def test_refusals(tmp_path, fields, code):
    with pytest.raises(ProtocolError) as e:
        check(JobStore(tmp_path), **fields)
    assert e.value.code == code


def test_queue_full(tmp_path):
    store = JobStore(tmp_path)
    limits = Limits(max_queue=1)
    first = check(store, limits, target_format="demo", preset="smoke")
    store.create(first.record, first.files)
    with pytest.raises(ProtocolError) as e:
        check(store, limits, job="j2", target_format="demo", preset="smoke")
    assert e.value.code == "queue_full"


@pytest.mark.parametrize("preset", ["preview", "standard", "final"])
def test_initial_points_beyond_what_the_job_holds_are_refused(tmp_path, preset):
    from stabledreamer.presets import PRESETS

    cap = max(s.strategy.max_gaussians for s in PRESETS[preset]().stages)
    for n in (1, cap):
        pts = np.zeros((n, 3), np.float32)
        assert check(JobStore(tmp_path), prompt="x", preset=preset, init_points=pts).record
    for n in (cap + 1, DEFAULT_LIMITS.max_init_points):
        pts = np.zeros((n, 3), np.float32)
        with pytest.raises(ProtocolError) as e:
            check(JobStore(tmp_path), prompt="x", preset=preset, init_points=pts)
        assert e.value.code == "too_many_points" and str(cap) in e.value.message
