"""Kill the service mid-job: SIGTERM checkpoints and exits cleanly, SIGKILL leaves no orphan
worker; either way the restarted service resumes the job from its last checkpoint and finishes
it, and nothing finished is lost."""

from __future__ import annotations

import json
import os
import signal
import time

from server_helpers import FAST, TARGET, alive, children_of, make_keys, wait_state, workers_of

from stabledreamer_protocol import Progress
from stabledreamer_protocol.client import ResultDownloaded

STEPS = 400  # long enough that the job cannot finish between a progress event and a signal


def progress_at_least(client, job: str, step: int, timeout_s: float = 60.0) -> Progress:
    hit = client.wait_for(
        lambda e: isinstance(e, Progress) and e.job == job and e.step >= step, timeout_s
    )
    assert hit is not None, f"{job}: no progress to step {step} in {timeout_s} s"
    return hit


def record(server, job: str) -> dict:
    return json.loads((server.state / "jobs" / f"j-{job}" / "job.json").read_text())


def test_sigterm_then_sigkill_then_resume(tmp_path, make_server):
    keys, state = tmp_path / "keys", tmp_path / "state"
    make_keys(keys)
    overrides = {**FAST, "reconstruct.steps": STEPS, "checkpoint_every": 2}

    # 1. SIGTERM mid-job: a checkpoint, a clean exit, the job waits to resume.
    s1 = make_server(state, keys)
    s1.wait_ready()
    with s1.client() as c:
        c.handshake(timeout_s=10)
        job = c.submit(
            target_format="ply", target_file=TARGET, preset="smoke", seed=7, overrides=overrides
        )
        progress_at_least(c, job, 3)
        s1.signal(signal.SIGTERM)
        assert s1.proc.wait(60) == 0, s1.log()
    rec = record(s1, job)
    assert rec["state"] == "queued" and "resume" in rec["message"]
    assert (state / "jobs" / f"j-{job}" / "run" / "checkpoints" / "last.pt").is_file()

    # 2. Restart on the same port: the job resumes by itself; then SIGKILL the service.
    s2 = make_server(state, keys, port=s1.port)
    s2.wait_ready()
    with s2.client() as c:
        c.handshake(timeout_s=10)
        c.attach(job)
        first = progress_at_least(c, job, 1)
        assert first.step > 3, "resumed from the checkpoint, not from the start"
        seen = progress_at_least(c, job, first.step + 3)
        workers = children_of(s2.proc.pid)
        assert workers, "the job runs in a worker process"
        s2.signal(signal.SIGKILL)
        s2.proc.wait(10)
    deadline = time.monotonic() + 10
    while any(alive(p) for p in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(alive(p) for p in workers), "a worker outlived the killed service"
    assert record(s2, job)["state"] == "running"  # as the killed service left it

    # 3. Restart: the job resumes from its last checkpoint and finishes; the result downloads.
    s3 = make_server(state, keys, port=s1.port)
    s3.wait_ready()
    with s3.client() as c:
        c.handshake(timeout_s=10)
        c.attach(job)
        first = progress_at_least(c, job, 1)
        assert first.step >= seen.step - 2
        # The worker itself dies (say the OOM killer): the service resumes the job.
        (worker,) = workers_of(s3.proc.pid)
        os.kill(worker, signal.SIGKILL)
        requeued = wait_state(c, job, "queued", 30)
        assert "unexpectedly" in requeued.message
        # generous: on a loaded machine the remaining steps take minutes (it only bounds a failure)
        hit = c.wait_for(lambda e: isinstance(e, ResultDownloaded) and e.job == job, 300)
        assert hit is not None, s3.log()
        metrics = json.loads(hit.files["metrics.json"])
        assert metrics["steps"] == STEPS
        assert record(s3, job)["state"] == "done"
        s3.signal(signal.SIGKILL)
        s3.proc.wait(10)

    # 4. Nothing finished is lost: after another SIGKILL the result is still served.
    s4 = make_server(state, keys, port=s1.port)
    s4.wait_ready()
    with s4.client() as c:
        c.handshake(timeout_s=10)
        c.attach(job)
        hit = c.wait_for(lambda e: isinstance(e, ResultDownloaded) and e.job == job, 30)
        assert hit is not None and json.loads(hit.files["metrics.json"])["steps"] == STEPS
        s4.signal(signal.SIGTERM)
        assert s4.proc.wait(30) == 0
