"""``WorkerPool`` with a stand-in worker (no torch): spawn, spare, tell/read, cancel grace, reap."""

from __future__ import annotations

import os
import time

from stabledreamer.server import pipe
from stabledreamer.server.pool import WorkerPool


def echo_worker(conn, parent_pid: int) -> None:
    """Says ready, then answers RunJob with JobStarted; dies on CancelJob when asked to hang."""
    conn.send(pipe.WorkerReady("fake"))
    while True:
        msg = conn.recv()
        if isinstance(msg, pipe.RunJob):
            conn.send(pipe.JobStarted(resumed=msg.spec.job == "resume"))
            if msg.spec.job == "crash":
                os._exit(3)
        elif isinstance(msg, pipe.CancelJob):
            time.sleep(60)  # a worker that does not stop: the pool must kill it
        elif isinstance(msg, pipe.ExitWorker):
            return


def spec(job: str) -> pipe.JobSpec:
    return pipe.JobSpec(job=job, job_dir="", run_dir="", kind="demo", preset="smoke",
                        overrides={}, seed=1)  # fmt: skip


def read_until(pool, w, kind, timeout_s=30.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for msg in pool.read(w):
            if isinstance(msg, kind):
                return msg
        time.sleep(0.02)
    raise AssertionError(f"no {kind.__name__} within {timeout_s} s")


def test_spare_is_taken_then_told_and_read():
    pool = WorkerPool(echo_worker)
    try:
        pool.keep_spare()
        spare = pool.spare
        assert spare is not None and pool.running() == []
        assert read_until(pool, spare, pipe.WorkerReady).device == "fake"
        w = pool.take("resume")
        assert w is spare and pool.spare is None and pool.worker_of("resume") is w
        pool.tell(w, pipe.RunJob(spec("resume")))
        assert read_until(pool, w, pipe.JobStarted).resumed
    finally:
        pool.kill_all()
    assert pool.workers == []


def test_a_crashed_worker_is_reaped_with_its_last_words_and_exit_code():
    pool = WorkerPool(echo_worker, prewarm=False)
    try:
        w = pool.take("crash")
        pool.tell(w, pipe.RunJob(spec("crash")))
        deadline = time.monotonic() + 30
        exited = []
        while not exited and time.monotonic() < deadline:
            exited = pool.reap()
            time.sleep(0.05)
        assert len(exited) == 1 and exited[0].worker is w and exited[0].exitcode == 3
        assert any(isinstance(m, pipe.JobStarted) for m in exited[0].last)
        assert pool.workers == []
        pool.keep_spare()
        assert pool.spare is None  # prewarm off
    finally:
        pool.kill_all()


def test_a_cancelled_worker_that_does_not_stop_is_killed_after_its_grace():
    pool = WorkerPool(echo_worker, prewarm=False)
    try:
        w = pool.take("hang")
        read_until(pool, w, pipe.WorkerReady)
        pool.cancel(w, grace_s=0.3)
        assert w.cancelled
        time.sleep(0.5)
        exited = pool.reap()
        assert [e.worker for e in exited] == [w] and not w.process.is_alive()
    finally:
        pool.kill_all()
