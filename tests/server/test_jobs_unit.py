"""In-process checks of the service's pieces: config overrides, job records, the log buffer."""

from __future__ import annotations

import json

import pytest

from stabledreamer.server.jobs import ConfigError, JobRecord, JobStore, build_config
from stabledreamer.server.logbuffer import LogBuffer


def test_overrides():
    cfg = build_config(
        "smoke",
        {"reconstruct.steps": 7, "stages.0.resolution": 24, "oracle.bank_views": 3},
        seed=5,
        target="x.ply",
    )
    assert cfg.stages[0].steps == 7 and cfg.stages[0].resolution == 24
    assert cfg.oracle.bank_views == 3
    assert cfg.seed == 5 and cfg.target == "x.ply"  # the submit's seed and target
    for bad in (
        {"target": "/etc/passwd"},
        {"seed": 9},  # the submit's seed field, not an override
        {"deepfloyd_if.model": "/tmp/x"},  # a client never names a path on the backend
        {"preset": "x"},
        {"nope": 1},
        {"reconstruct.steps": "many"},
        {"reconstruct.steps": 0},
        {"stages.5.steps": 1},
        {"oracle": 1},
        {"": 1},
        {"reconstruct..steps": 1},
    ):
        with pytest.raises(ConfigError) as e:
            build_config("smoke", bad, seed=0, target="x")
        assert e.value.code == "bad_override", bad
    with pytest.raises(ConfigError) as e:
        build_config("huge", {}, seed=0, target="x")
    assert e.value.code == "unknown_preset"


def test_store_recovers_interrupted_jobs(tmp_path):
    store = JobStore(tmp_path)
    rec = JobRecord(job="..", seq=store.next_seq(), digest="d", kind="demo", preset="smoke", seed=1)
    store.create(rec, {"target.ply": b"ply"})
    assert store.dir("..").parent == store.root  # ids such as ".." stay inside the state folder
    rec.state = "running"
    store.save(rec)
    (store.root / "j-half").mkdir()  # a submission interrupted before its record
    again = JobStore(tmp_path)
    assert [r.job for r in again.load()] == [".."]
    assert again.get("..").state == "queued"
    assert json.loads((again.dir("..") / "job.json").read_text())["state"] == "queued"
    assert not (store.root / "j-half").exists()
    again.delete("..")
    assert not again.dir("..").exists() and JobStore(tmp_path).load() == []


def test_log_buffer():
    buf = LogBuffer(capacity=5)
    for i in range(8):
        buf.add(f"line {i}", job="a" if i % 2 else None)
    lines, cursor = buf.since(0, 100)
    assert lines == [f"line {i}" for i in range(3, 8)] and cursor == 8
    assert buf.since(cursor, 100) == ([], 8)
    assert buf.since(0, 100, job="a")[0] == ["line 3", "line 5", "line 7"]
    assert buf.since(0, 2)[0] == ["line 6", "line 7"]
    assert buf.since(0, 100, max_bytes=20)[0] == ["line 6", "line 7"]
