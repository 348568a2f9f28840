"""The service over real sockets: a job from submit to downloaded result, several clients, a
client that disappears, attach after the fact, flow control, refusals, cancel, housekeeping."""

from __future__ import annotations

import json
import time

import zmq
from server_helpers import FAST, TARGET, reply_to, wait_state

from stabledreamer_protocol import (
    PREVIEW_CREDIT,
    Attach,
    Delete,
    Error,
    Fetch,
    GetLogs,
    Jobs,
    JobState,
    Logs,
    Preview,
    Progress,
    Result,
    Status,
    codec,
)
from stabledreamer_protocol.client import ResultDownloaded
from stabledreamer_protocol.keys import KeyFiles, apply_client_curve


def submit_tiny(client, steps: int = 4, **kw) -> str:
    overrides = {**FAST, "reconstruct.steps": steps, **kw.pop("overrides", {})}
    return client.submit(
        target_format="ply",
        target_name="octahedron",
        target_file=TARGET,
        preset="smoke",
        seed=kw.pop("seed", 3),
        overrides=overrides,
        **kw,
    )


def raw_dealer(server):
    """A DEALER that never acknowledges previews (a slow client)."""
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    keys = KeyFiles(server.keys)
    apply_client_curve(sock, keys.client_secret, keys.server_public)
    sock.connect(server.endpoint)
    return sock


def drain(sock, until, timeout_s: float) -> list:
    """Messages read until one satisfies ``until`` (bounded by ``timeout_s``)."""
    out, deadline = [], time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if sock.poll(50):
            out.append(codec.recv(sock, direction="event"))
            if until(out[-1]):
                break
    return out


def test_hello(server):
    with server.client() as c:
        hello = c.handshake(timeout_s=10)
    assert hello.protocol.startswith("1.")
    assert {"reconstruct", "demo", "fetch", "delete", "logs", "curve"} <= set(hello.features)
    assert "smoke" in hello.presets and hello.default_preset in hello.presets
    assert hello.limits["max_queue"] == 3


def test_job_two_clients_disconnect_and_late_attach(server):
    a, b, slow = server.client(), server.client(), raw_dealer(server)
    try:
        a.handshake(timeout_s=10)
        b.handshake(timeout_s=10)
        job = submit_tiny(a, steps=12, preview_points=64)
        first = wait_state(a, job, ("queued", "running"))
        assert first.seed == 3
        b.attach(job, preview_points=32)
        codec.send(slow, Attach(job=job, preview_points=16))
        # A sees the job run, then disappears without a word; the job goes on.
        assert a.wait_for(lambda e: isinstance(e, Progress) and e.job == job, 60) is not None
        a.close()

        hit = b.wait_for(lambda e: isinstance(e, ResultDownloaded) and e.job == job, 90)
        assert hit is not None, server.log()
        assert set(hit.files) >= {"gaussians.ply", "metrics.json"}
        assert hit.files["gaussians.ply"].startswith(b"ply")
        metrics = json.loads(hit.files["metrics.json"])
        assert metrics["steps"] == 12 and hit.manifest.metrics["steps"] == 12
        assert b.jobs[job].state == "done"

        # The slow client never acknowledged: at most PREVIEW_CREDIT previews, every progress
        # stage and the must-deliver messages all arrived.
        got = drain(slow, lambda m: isinstance(m, Result), 10.0)
        previews = [m for m in got if isinstance(m, Preview)]
        assert 1 <= len(previews) <= PREVIEW_CREDIT
        assert all(p.count <= 16 for p in previews)
        assert any(isinstance(m, Result) for m in got)
        assert [m.state for m in got if isinstance(m, JobState)][-1] == "done"

        # A new client attaches after the fact and gets the result.
        with server.client() as c:
            c.handshake(timeout_s=10)
            c.attach(job)
            hit = c.wait_for(lambda e: isinstance(e, ResultDownloaded) and e.job == job, 30)
            assert hit is not None and hit.files["gaussians.ply"].startswith(b"ply")
            # Resubmitting the same request is harmless: the state, and the result again.
            again = submit_tiny(c, steps=12, preview_points=64, job=job)
            assert wait_state(c, again, "done").job == job
            # Same id, different content: refused.
            submit_tiny(c, steps=5, job=job)
            err = c.wait_for(lambda e: isinstance(e, Error) and e.job == job, 10)
            assert err.code == "job_conflict"
            # Status, list, logs, fetch out of range, delete.
            assert reply_to(c, c.send(Status(job=job))).state == "done"
            jobs = reply_to(c, c.list_jobs())
            assert isinstance(jobs, Jobs) and job in [j.job for j in jobs.jobs]
            logs = reply_to(c, c.send(GetLogs(job=job)))
            assert isinstance(logs, Logs) and any("done" in line for line in logs.lines)
            assert logs.cursor > 0
            bad = reply_to(c, c.send(Fetch(job=job, file="gaussians.ply", index=10**6)))
            assert isinstance(bad, Error) and bad.code == "bad_field"
            left = reply_to(c, c.send(Delete(job=job)))
            assert isinstance(left, Jobs) and job not in [j.job for j in left.jobs]
            gone = reply_to(c, c.send(Status(job=job)))
            assert isinstance(gone, Error) and gone.code == "unknown_job"
        assert not any(p.name == f"j-{job}" for p in (server.state / "jobs").iterdir())
    finally:
        a.close()
        b.close()
        slow.close(0)


def test_refusals_keep_serving(server):
    with server.client() as c:
        c.handshake(timeout_s=10)
        for kw, code in [
            ({"prompt": "a ceramic teapot", "preset": "smoke"}, "unknown_preset"),
            ({"prompt": "a teapot", "overrides": {"deepfloyd_if.model": "/tmp"}}, "bad_override"),
        ]:
            job = c.submit(**kw)
            err = c.wait_for(lambda e, j=job: isinstance(e, Error) and e.job == j, 10)
            assert err is not None and err.code == code, (kw, err)
        # A text job whose model set is not downloaded: refused at once, saying what to fetch.
        job = c.submit("a ceramic teapot", preset="preview", seed=1)
        err = c.wait_for(lambda e: isinstance(e, Error) and e.job == job, 10)
        assert err is not None and err.code == "models_missing", err
        assert "'if-sd'" in err.message and "stabledreamer models download if-sd" in err.message
        for fields, code in [
            ({"preset": "huge"}, "unknown_preset"),
            ({"overrides": {"reconstruct.steps": "many"}}, "bad_override"),
            ({"overrides": {"target": "/etc/passwd"}}, "bad_override"),
            ({"overrides": {"no_such_setting": 1}}, "bad_override"),
        ]:
            kw = {"preset": "smoke", **fields}
            job = c.submit(target_format="ply", target_file=TARGET, **kw)
            err = c.wait_for(lambda e, j=job: isinstance(e, Error) and e.job == j, 10)
            assert err is not None and err.code == code, (fields, err)
        # A target that is not a mesh: accepted, then the job fails with a clear error.
        job = c.submit(target_format="ply", target_file=TARGET[:40], preset="smoke", seed=1)
        err = c.wait_for(lambda e: isinstance(e, Error) and e.job == job, 60)
        assert err is not None and err.code == "job_failed" and "ply" in err.message
        failed = wait_state(c, job, "failed", 10)
        assert failed.message == err.message
        unknown = reply_to(c, c.send(Status(job="nobody")))
        assert isinstance(unknown, Error) and unknown.code == "unknown_job"
        early = reply_to(c, c.send(Fetch(job="nobody", file="a.ply")))
        assert early.code == "unknown_job"
        assert reply_to(c, c.ping()).TYPE == "pong"


def test_queue_full_and_cancel(server):
    with server.client() as c:
        c.handshake(timeout_s=10)
        jobs, refused = [], None
        for i in range(4):  # the server takes at most 3 queued or running jobs
            job = submit_tiny(c, steps=400, seed=10 + i)
            hit = c.wait_for(lambda e, j=job: (isinstance(e, JobState | Error)) and e.job == j, 10)
            if isinstance(hit, Error):
                refused = hit
                break
            jobs.append(job)
        assert refused is not None and refused.code == "queue_full"
        running = jobs[0]
        wait_state(c, running, "running", 60)
        assert c.wait_for(lambda e: isinstance(e, Progress) and e.job == running, 60)
        # Queued and running jobs cancel; the running one stops within a step, so the next
        # job starts at once.
        c.cancel(jobs[1])
        assert wait_state(c, jobs[1], "cancelled").state == "cancelled"
        t0 = time.monotonic()
        c.cancel(running)
        wait_state(c, running, "cancelled")
        if len(jobs) > 2:
            wait_state(c, jobs[2], "running", 30)
            assert time.monotonic() - t0 < 30
            c.cancel(jobs[2])
            wait_state(c, jobs[2], "cancelled")
        # Cancelling a finished job is harmless.
        c.cancel(running)
        assert wait_state(c, running, "cancelled").state == "cancelled"
        # The cancelled job wrote a checkpoint when it stopped.
        run_dir = server.state / "jobs" / f"j-{running}" / "run"
        assert (run_dir / "checkpoints" / "last.pt").is_file()
        listing = reply_to(c, c.list_jobs())
        states = {j.job: j.state for j in listing.jobs}
        assert all(states[j] == "cancelled" for j in jobs)
        # Clean up so other tests find an empty queue.
        for j in jobs:
            reply_to(c, c.send(Delete(job=j)))


def test_demo_target(server):
    """The built-in demo object is a target too (no upload): accepted, run, cancelled."""
    with server.client() as c:
        c.handshake(timeout_s=10)
        # long enough that it cannot finish before the cancel arrives
        overrides = {**FAST, "reconstruct.steps": 400}
        job = c.submit(target_format="demo", preset="smoke", seed=1, overrides=overrides)
        wait_state(c, job, "running", 60)
        c.cancel(job)
        wait_state(c, job, "cancelled")
        reply_to(c, c.send(Delete(job=job)))
