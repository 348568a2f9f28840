"""Several long-lived workers (``serve --workers N``): two jobs at once, a worker killed mid-job
whose job resumes elsewhere from its checkpoint with the same result as an uninterrupted run,
warm models reused by the next job (counted by the worker, not timed), a failure or a kill
replacing the worker, a cancel that stops in time keeping it, and fairness between clients."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import time

import numpy as np
from server_helpers import FAST, FAST_TEXT, alive, make_keys, reply_to, wait_state
from test_delivery import FakeSocket
from test_disk_full import FakePool
from test_ownership import Frame

from stabledreamer.server.service import Service, ServiceConfig
from stabledreamer_protocol import Error, GetLogs, JobState, Progress, Status, Submit, codec
from stabledreamer_protocol.client import ResultDownloaded

STEPS = 150
OCTA_DEGENERATE = b"""ply
format ascii 1.0
element vertex 3
property float x
property float y
property float z
element face 1
property list uchar int vertex_indices
end_header
0 0 0
0 0 0
0 0 0
3 0 1 2
"""


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def worker_pids(server) -> dict[int, int]:
    """slot -> pid of its newest process, from the service's log."""
    found = re.findall(r"worker (\d+) ready \(pid (\d+)\)", server.log_path.read_text())
    return {int(slot): int(pid) for slot, pid in found}


def slot_of(server, job: str) -> int:
    found = re.findall(rf"job {job} started on worker (\d+)", server.log_path.read_text())
    return int(found[-1])


def workers(client):
    return client.handshake(timeout_s=10).workers


def done(client, job, timeout_s=180.0) -> ResultDownloaded:
    hit = client.wait_for(lambda e: isinstance(e, ResultDownloaded) and e.job == job, timeout_s)
    assert hit is not None, f"{job} did not finish in {timeout_s} s"
    return hit


def test_two_workers_run_two_jobs_at_once_and_a_killed_workers_job_resumes_exactly(
    tmp_path, make_server
):
    make_keys(tmp_path / "keys")
    s = make_server(tmp_path / "state", tmp_path / "keys", "--workers", "2")
    s.wait_ready()
    overrides = {**FAST, "reconstruct.steps": STEPS, "checkpoint_every": 2}
    with s.client() as c:
        hello = c.handshake(timeout_s=10)
        assert len(hello.workers) == 2 and "workers" in hello.features
        a = c.submit(target_format="demo", preset="smoke", seed=7, overrides=overrides)
        b = c.submit(target_format="demo", preset="smoke", seed=7, overrides=overrides)
        # Both run at once: each makes progress before either is done.
        seen: set[str] = set()
        deadline = time.monotonic() + 120
        while seen != {a, b} and time.monotonic() < deadline:
            e = c.wait_for(lambda e: isinstance(e, Progress | JobState), 5)
            if isinstance(e, Progress) and e.step < STEPS:
                seen.add(e.job)
            assert not (isinstance(e, JobState) and e.state == "done"), "one ran after the other"
        assert seen == {a, b}, s.log()
        states = [w.state for w in workers(c)]
        assert states == ["busy", "busy"], states
        # Kill b's worker once b has a checkpoint past its start.
        at = c.wait_for(lambda e: isinstance(e, Progress) and e.job == b and e.step >= 8, 60)
        assert at is not None, s.log()
        victim = worker_pids(s)[slot_of(s, b)]
        os.kill(victim, signal.SIGKILL)
        requeued = wait_state(c, b, "queued", 30)
        assert "resuming from the last checkpoint" in requeued.message
        ra, rb = done(c, a), done(c, b)
        # The client's log of the job says where it resumed: from a checkpoint, not step 0.
        logs = reply_to(c, c.send(GetLogs(job=b)))
        (line,) = [t for t in logs.lines if "resumed from its checkpoint at" in t]
        resumed = int(re.search(r"step (\d+) of", line).group(1))
        assert 2 <= resumed <= STEPS - 2, line
        # The uninterrupted run and the resumed one end with the very same Gaussians.
        assert sha(rb.files["gaussians.ply"]) == sha(ra.files["gaussians.ply"])
        assert not alive(victim)
        # The dead worker's slot has a fresh process; the other kept its own.
        deadline = time.monotonic() + 60
        while [w.state for w in workers(c)] != ["idle", "idle"] and time.monotonic() < deadline:
            time.sleep(0.5)
        assert [w.state for w in workers(c)] == ["idle", "idle"]
        assert victim not in worker_pids(s).values()
    print(f"killed after step {at.step}, resumed from step {resumed}")


def test_warm_models_are_reused_kept_after_a_cancel_and_dropped_after_a_failure(
    tmp_path, make_server, tiny_models
):
    tiny = tiny_models
    make_keys(tmp_path / "keys")
    s = make_server(tmp_path / "state", tmp_path / "keys", "--cancel-grace-s", "60",
                    "--if-model", str(tiny / "if"), "--sd-model", str(tiny / "sd"))  # fmt: skip
    s.wait_ready()
    short = {**FAST_TEXT, "geometry.steps": 1, "detail.steps": 1, "mesh.enabled": False}
    with s.client() as c:
        c.handshake(timeout_s=10)
        first = done(c, c.submit("a red chair", preset="preview", seed=3, overrides=short))
        (w,) = workers(c)
        assert (w.jobs_run, w.loads) == (1, 2)  # IF and SD loaded once
        done(c, c.submit("a blue vase", preset="preview", seed=4, overrides=short))
        (w,) = workers(c)
        assert (w.jobs_run, w.loads) == (2, 2), "the second prompt reused the loaded models"
        again = done(c, c.submit("a red chair", preset="preview", seed=3, overrides=short))
        # Warm (the prompt encoded again by the kept text encoder) is the same as cold.
        assert sha(again.files["gaussians.ply"]) == sha(first.files["gaussians.ply"])
        pid = worker_pids(s)[0]

        # A cancel that stops in time keeps the worker (and its models).
        many = {**short, "geometry.steps": 400}
        long = c.submit("a green lamp", preset="preview", seed=5, overrides=many)
        assert c.wait_for(lambda e: isinstance(e, Progress) and e.job == long, 60), s.log()
        c.cancel(long)
        wait_state(c, long, "cancelled", 10)
        deadline = time.monotonic() + 60
        while workers(c)[0].state != "idle" and time.monotonic() < deadline:
            time.sleep(0.2)
        (w,) = workers(c)
        assert (w.state, w.jobs_run, w.loads) == ("idle", 4, 2) and worker_pids(s)[0] == pid

        # A failed job ends its worker: the fresh one in its place has loaded nothing.
        bad = c.submit(target_format="ply", target_file=np.frombuffer(OCTA_DEGENERATE, np.uint8),
                       preset="smoke", overrides=FAST)  # fmt: skip
        failed = c.wait_for(lambda e: isinstance(e, Error) and e.job == bad, 60)
        assert failed is not None and "degenerate" in failed.message, s.log()
        deadline = time.monotonic() + 60
        while worker_pids(s)[0] == pid and time.monotonic() < deadline:
            time.sleep(0.2)
        assert worker_pids(s)[0] != pid and not alive(pid)
        (w,) = workers(c)
        assert (w.jobs_run, w.loads) == (0, 0)


def ask(service, sock, user: str, msg):
    peer = service.delivery.peer(user.encode())
    service.access.identify(peer, Frame(user))
    service._read_one(peer, msg)
    frames = [fr for i, fr in sock.sent if i == peer.identity][-1]
    return codec.decode([bytes(f) for f in frames])


class OneWorker(FakePool):
    def take(self, job):
        return None if self.running() else super().take(job)

    def describe(self):
        (w,) = self.running() or [None]
        job = w.job if w else None
        state = "busy" if w else "idle"
        return [{"device": "cpu", "state": state, "job": job, "jobs_run": 0, "loads": 0}]


def test_one_clients_jobs_do_not_starve_anothers(tmp_path):
    service = Service(ServiceConfig(bind="tcp://127.0.0.1:1", state=tmp_path, prewarm=False))
    pool = service.pool = OneWorker()
    sock = FakeSocket()
    service.delivery.send = sock
    alice, bob = "A" * 40, "B" * 40
    mine = [ask(service, sock, alice, Submit(job=f"a{i}", target_format="demo", preset="smoke"))
            for i in range(4)]  # fmt: skip
    service._schedule()
    theirs = ask(service, sock, bob, Submit(job="b0", target_format="demo", preset="smoke"))
    assert [m.queue_position for m in mine] == [0, 1, 2, 3]
    assert theirs.queue_position == 0  # ahead of alice's three waiting jobs
    status = ask(service, sock, alice, Status(job="a2"))
    assert status.queue_position == 2
    assert [(w.state, w.job) for w in status.workers] == [("busy", "a0")]
    status = ask(service, sock, bob, Status(job="b0"))
    assert [(w.state, w.job) for w in status.workers] == [("busy", None)]  # counted, not named
    started = []
    for _ in range(5):
        (w,) = pool.running()
        started.append(w.job)
        service.store.get(w.job).state = "done"
        pool.release(w)
        service._schedule()
        if not pool.running():
            break
    assert started == ["a0", "b0", "a1", "a2", "a3"]


def test_a_job_whose_worker_keeps_dying_fails_after_three_tries(tmp_path):
    from stabledreamer.server.jobs import JobRecord
    from stabledreamer.server.pool import Exited

    service = Service(ServiceConfig(bind="tcp://127.0.0.1:1", state=tmp_path, prewarm=False))
    pool = service.pool = OneWorker()
    rec = JobRecord(job="j", seq=1, digest="d", kind="demo", preset="smoke", seed=1)
    service.store.create(rec, {})
    for attempt in range(3):
        service._schedule()
        (w,) = pool.running()
        assert rec.state == "running" and rec.starts == attempt + 1
        pool.workers.remove(w)  # its process died (the real pool reaps it)
        service._on_exit(Exited(w, -9, []))
        if attempt < 2:
            assert rec.state == "queued" and "last checkpoint" in rec.message
    assert rec.state == "failed" and "3 times" in rec.message
    service._schedule()
    assert pool.running() == []


def test_a_standby_process_takes_over_a_killed_workers_job(tmp_path, make_server):
    """``serve --standby 1``: a spare process, started beside the worker, resumes the job of a
    killed worker at once (no new process to wait for), and a new spare starts behind it."""
    from server_helpers import workers_of

    make_keys(tmp_path / "keys")
    s = make_server(tmp_path / "state", tmp_path / "keys", "--standby", "1")
    s.wait_ready()
    overrides = {**FAST, "reconstruct.steps": 60, "checkpoint_every": 2}
    with s.client() as c:
        c.handshake(timeout_s=10)
        job = c.submit(target_format="demo", preset="smoke", seed=7, overrides=overrides)
        at = c.wait_for(lambda e: isinstance(e, Progress) and e.job == job and e.step >= 4, 120)
        assert at is not None, s.log()
        (victim,) = map(int, re.findall(rf"job {job} started on worker 0 \(pid (\d+)", s.log()))
        spares = set(workers_of(s.proc.pid)) - {victim}
        assert len(spares) == 1, (victim, workers_of(s.proc.pid))
        os.kill(victim, signal.SIGKILL)
        wait_state(c, job, "queued", 30)
        done(c, job)
        took = re.findall(r"a standby process \(pid (\d+)\) takes over", s.log())
        assert [int(p) for p in took] == list(spares), s.log()
        restarted = re.findall(rf"job {job} started on worker 0 \(pid (\d+)", s.log())
        assert int(restarted[-1]) in spares
        deadline = time.monotonic() + 60
        while len(workers_of(s.proc.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len(set(workers_of(s.proc.pid)) - spares - {victim}) == 1  # a new spare
