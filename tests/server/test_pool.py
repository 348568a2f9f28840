"""``WorkerPool`` with a stand-in worker (no torch): slots, take/release/reuse, a GPU slot's
environment, cancel grace, reaping and refilling."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from stabledreamer.errors import ConfigError
from stabledreamer.server import pipe
from stabledreamer.server.pool import Slot, WorkerPool, plan_slots
from stabledreamer.server.settings import resolve_gpus


def echo_worker(conn, parent_pid: int, slot) -> None:
    """Says ready (naming its GPU as its environment has it), then answers each RunJob with
    JobStarted and a final JobDone; exits on a "crash" job; hangs on CancelJob when asked to."""
    gpu = os.environ.get("CUDA_VISIBLE_DEVICES", "-")
    conn.send(pipe.WorkerReady(f"{gpu} pid={os.getpid()}"))
    while True:
        msg = conn.recv()
        if isinstance(msg, pipe.RunJob):
            conn.send(pipe.JobStarted(resumed=msg.spec.job == "resume"))
            if msg.spec.job == "crash":
                os._exit(3)
            if msg.spec.job != "hang":
                conn.send(pipe.JobDone({}, {}))
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
            if isinstance(msg, pipe.WorkerReady):
                w.ready, w.device = True, msg.device
            if isinstance(msg, kind):
                return msg
        time.sleep(0.02)
    raise AssertionError(f"no {kind.__name__} within {timeout_s} s")


def test_slots_take_the_first_idle_worker_and_reuse_it_after_release():
    pool = WorkerPool(echo_worker, slots=plan_slots(2, cpus=4))
    assert [s.threads for s in pool.slots] == [2, 2]  # the cores shared, not oversubscribed
    try:
        pool.fill()
        a, b = sorted(pool.workers, key=lambda w: w.slot.index)
        for w in (a, b):
            read_until(pool, w, pipe.WorkerReady)
        assert [e["state"] for e in pool.describe()] == ["idle", "idle"]
        assert pool.take("j1") is a and pool.take("j2") is b
        assert pool.take("j3") is None and len(pool.running()) == 2
        assert [e["state"] for e in pool.describe()] == ["busy", "busy"]
        pool.tell(b, pipe.RunJob(spec("j2")))
        read_until(pool, b, pipe.JobDone)
        pool.release(b)
        again = pool.take("j3")
        assert again is b and b.jobs_run == 2  # the same process, its second job
        pool.tell(b, pipe.RunJob(spec("resume")))
        assert read_until(pool, b, pipe.JobStarted).resumed
    finally:
        pool.kill_all()
    assert pool.workers == []


def test_a_starting_worker_takes_a_job_that_waits_in_its_pipe():
    pool = WorkerPool(echo_worker, slots=plan_slots(1))
    try:
        pool.fill()
        (w,) = pool.workers
        assert pool.take("early") is w and w.state == "busy"  # not ready yet: queued in its pipe
        assert pool.take("next") is None
        pool.tell(w, pipe.RunJob(spec("early")))
        read_until(pool, w, pipe.JobDone)
    finally:
        pool.kill_all()


def test_a_gpu_slot_sees_only_its_gpu_from_its_first_line():
    pool = WorkerPool(echo_worker, slots=[Slot(0, gpu="1"), Slot(1, gpu="GPU-abc")])
    try:
        pool.fill()
        seen = sorted(read_until(pool, w, pipe.WorkerReady).device for w in pool.workers)
        assert [d.split()[0] for d in seen] == ["1", "GPU-abc"]
        # the service's own environment is left as it was
        assert os.environ.get("CUDA_VISIBLE_DEVICES") not in ("1", "GPU-abc")
        assert [e["device"].split(":")[0] for e in pool.describe()] == ["GPU 1", "GPU GPU-abc"]
    finally:
        pool.kill_all()


def test_a_worker_process_imports_no_torch_before_its_entry_point():
    """What a spawned worker imports before ``worker_main`` runs (the worker module; spawn
    skips a package's ``__main__``) holds no torch, so nothing can read
    ``CUDA_VISIBLE_DEVICES`` early (the pool sets it in the child's environment anyway, before
    the process starts)."""
    code = "import sys, stabledreamer.server.worker; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stderr


def test_resolve_gpus(monkeypatch):
    assert resolve_gpus("0,1") == ["0", "1"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert resolve_gpus("auto") == ["2", "3"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(ConfigError, match="no GPU"):
        resolve_gpus("auto")
    for bad in ("0,0", "x", "0,,1"):
        with pytest.raises(ConfigError):
            resolve_gpus(bad)


def test_a_crashed_worker_is_reaped_with_its_last_words_and_its_slot_refilled():
    pool = WorkerPool(echo_worker, prewarm=False)
    try:
        w = pool.take("crash")  # no worker yet: one is started for the job
        pool.tell(w, pipe.RunJob(spec("crash")))
        deadline = time.monotonic() + 30
        exited = []
        while not exited and time.monotonic() < deadline:
            exited = pool.reap()
            time.sleep(0.05)
        assert len(exited) == 1 and exited[0].worker is w and exited[0].exitcode == 3
        assert any(isinstance(m, pipe.JobStarted) for m in exited[0].last)
        assert pool.workers == []
        pool.fill()
        assert pool.workers == []  # prewarm off: started when a job needs one
        pool.prewarm = True
        pool.fill()
        assert len(pool.workers) == 1 and pool.workers[0] is not w
    finally:
        pool.kill_all()


def test_a_cancelled_worker_that_does_not_stop_is_killed_after_its_grace():
    pool = WorkerPool(echo_worker, prewarm=False)
    try:
        w = pool.take("hang")
        pool.tell(w, pipe.RunJob(spec("hang")))
        read_until(pool, w, pipe.JobStarted)
        pool.cancel(w, grace_s=0.3)
        assert w.cancelled
        time.sleep(0.5)
        exited = pool.reap()
        assert [e.worker for e in exited] == [w] and not w.process.is_alive()
    finally:
        pool.kill_all()


def test_a_standby_process_takes_over_a_lost_workers_slot_and_another_starts():
    """``standby``: a spare, started and ready, replaces a worker that died mid-job at once (its
    ``WorkerReady`` handed on, its heartbeats dropped); a new spare starts behind it; a spare
    for another GPU does not take the slot; ``kill_all`` ends the spares too."""
    pool = WorkerPool(echo_worker, slots=[Slot(0, gpu="3"), Slot(1, gpu="5")], standby=1)
    try:
        pool.fill()
        assert len(pool.workers) == 2 and len(pool.spares) == 1
        spare = pool.spares[0]
        assert spare.slot.gpu == "3" and spare not in pool.workers
        deadline = time.monotonic() + 30
        while not spare.held and time.monotonic() < deadline:
            pool.tend_spares()
            time.sleep(0.05)
        assert [type(m) for m in spare.held] == [pipe.WorkerReady]
        for job, slot in (("crash", 0), ("crash", 1)):
            w = next(w for w in pool.workers if w.slot.index == slot)
            read_until(pool, w, pipe.WorkerReady)
            pool.take(job)  # the first idle worker: the one in slot `slot`
            pool.tell(w, pipe.RunJob(spec(job)))
            deadline = time.monotonic() + 30
            while not pool.reap() and time.monotonic() < deadline:
                time.sleep(0.05)
            pool.fill()
            new = next(w for w in pool.workers if w.slot.index == slot)
            if slot == 0:  # GPU 3: the spare, already started, now in slot 0
                assert new is spare and new.slot.index == 0
                assert [type(m) for m in pool.read(new)][:1] == [pipe.WorkerReady]
                assert len(pool.spares) == 1 and pool.spares[0] is not spare
                assert pool.spares[0].slot.gpu == "3"
            else:  # GPU 5: no spare for it, a fresh process
                assert new is not spare and new.process.pid not in (
                    s.process.pid for s in pool.spares
                )
        spares = list(pool.spares)
    finally:
        pool.kill_all()
    assert pool.spares == [] and not any(s.process.is_alive() for s in spares)


def test_a_dead_spare_is_dropped_and_replaced_only_after_a_pause():
    pool = WorkerPool(echo_worker, standby=1)
    try:
        pool.fill()
        spare = pool.spares[0]
        spare.process.kill()
        spare.process.join(10)
        pool.tend_spares()
        assert pool.spares == []  # not restarted at once: a spare that keeps dying must not spin
        pool._spare_retry_at = 0.0
        pool.tend_spares()
        assert len(pool.spares) == 1 and pool.spares[0] is not spare
    finally:
        pool.kill_all()
