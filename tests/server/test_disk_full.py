"""A full disk, injected (ENOSPC, EDQUOT, torch's errno-less writer failure) and real (a small
tmpfs, when this machine lets the tests mount one): "disk full" with the folder and the space,
old files kept, the service serving, and the job resuming once there is room."""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

import pytest
import torch

from stabledreamer import atomic
from stabledreamer.atomic import DiskFullError, atomic_path
from stabledreamer.runs import checkpoint as C
from stabledreamer.server import pipe
from stabledreamer.server import space as space_mod
from stabledreamer.server.jobs import JobRecord, JobStore
from stabledreamer.server.pool import WorkerHandle
from stabledreamer.server.service import Service, ServiceConfig
from stabledreamer.server.worker import failure

FAILURES = {
    "enospc": lambda: OSError(errno.ENOSPC, "No space left on device"),
    "edquot": lambda: OSError(errno.EDQUOT, "Disk quota exceeded"),
    # What torch.save raises on a full disk (measured on a full tmpfs): no errno anywhere.
    "torch": lambda: RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos"),
}


@pytest.mark.parametrize("kind", list(FAILURES))
@pytest.mark.parametrize("free", [0, 4096, atomic.LOW_SPACE_BYTES - 1, 10**12])
def test_a_failed_write_says_disk_full_and_keeps_the_old_file(tmp_path, monkeypatch, kind, free):
    target = tmp_path / "a.bin"
    target.write_bytes(b"old")
    monkeypatch.setattr(atomic, "free_bytes", lambda folder: free)
    is_full = kind != "torch" or free < atomic.LOW_SPACE_BYTES
    with pytest.raises(DiskFullError if is_full else RuntimeError) as e:
        with atomic_path(target, needed=5 * 2**20) as tmp:
            tmp.write_bytes(b"partial")
            raise FAILURES[kind]()
    if is_full:
        assert e.value.code == "disk_full" and e.value.folder == tmp_path
        assert str(tmp_path) in str(e.value) and "5.0 MiB" in str(e.value)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.bin"]  # no temp file left


def test_records_survive_a_full_disk_and_are_written_when_there_is_room(tmp_path, monkeypatch):
    store = JobStore(tmp_path)
    rec = JobRecord(job="a", seq=store.next_seq(), digest="d", kind="demo", preset="smoke", seed=1)
    store.create(rec, {})
    real = atomic.write_json

    def full(path, obj):
        raise DiskFullError("disk full", folder=Path(path).parent, free=0)

    monkeypatch.setattr("stabledreamer.server.jobs.write_json", full)
    rec.state = "cancelled"
    store.save(rec)  # no exception: the service goes on
    assert store.unsaved == {"a"}
    b = JobRecord(job="b", seq=store.next_seq(), digest="d", kind="demo", preset="smoke", seed=1)
    with pytest.raises(DiskFullError):
        store.create(b, {"target.ply": b"x"})
    assert not store.dir("b").exists() and store.get("b") is None
    monkeypatch.setattr("stabledreamer.server.jobs.write_json", real)
    store.retry_unsaved()
    assert store.unsaved == set()
    again = JobStore(tmp_path)
    again.load()
    assert again.get("a").state == "cancelled"


class FakePool:
    def __init__(self) -> None:
        self.workers, self.told = [], []

    def running(self):
        return [w for w in self.workers if w.job is not None]

    def take(self, job):
        w = WorkerHandle(process=None, conn=None, job=job)
        self.workers.append(w)
        return w

    def tell(self, w, msg):
        self.told.append((w.job, msg))

    def fill(self):
        pass

    def release(self, w):
        w.job = None

    def worker_of(self, job):
        return next((w for w in self.workers if w.job == job), None)


def test_the_job_waits_for_room_then_resumes(tmp_path, monkeypatch):
    service = Service(ServiceConfig(bind="tcp://127.0.0.1:1", state=tmp_path, prewarm=False))
    service.pool = FakePool()
    store = service.store
    rec = JobRecord(job="j", seq=store.next_seq(), digest="d", kind="demo", preset="smoke", seed=1)
    store.create(rec, {})
    service._schedule()
    (w,) = service.pool.workers
    assert rec.state == "running"
    free = {"bytes": 0}
    monkeypatch.setattr(space_mod, "free_bytes", lambda folder: free["bytes"])
    service._on_worker(w, pipe.JobFailed("disk_full", "disk full: ...", needed_bytes=10**8))
    service.pool.workers.clear()  # the worker exits after its final message
    assert rec.state == "queued" and "resumes when there is room" in rec.message
    for _ in range(3):
        service.space.release(service.store)
        service._schedule()
    assert len(service.pool.told) == 1  # held: nothing started
    free["bytes"] = 10**8
    service.space.release(service.store)
    service._schedule()
    assert rec.state == "running" and len(service.pool.told) == 2


@pytest.mark.parametrize("kind", list(FAILURES))
def test_the_worker_reports_disk_full(tmp_path, monkeypatch, kind):
    monkeypatch.setattr(atomic, "free_bytes", lambda folder: 0)
    failed = failure(FAILURES[kind](), MemoryError, (DiskFullError,), tmp_path)
    if kind == "torch":  # a bare torch error (not through atomic_path) stays a bug
        assert failed.code == "internal"
    else:
        assert failed.code == "disk_full" and str(tmp_path) in failed.message


@pytest.fixture
def small_disk(tmp_path):
    """An 8 MiB tmpfs, when this machine lets the tests mount one (root in a container)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)],
                       capture_output=True)  # fmt: skip
    if r.returncode != 0:
        pytest.skip("cannot mount a small filesystem here")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_a_real_full_disk_keeps_the_last_good_checkpoint(small_disk):
    run = small_disk / "run"
    C.save_checkpoint(run, {"step": 1, "x": torch.zeros(100_000)})  # 0.4 MB
    with pytest.raises(DiskFullError) as e:
        C.save_checkpoint(run, {"step": 2, "x": torch.zeros(4_000_000)})  # 16 MB: does not fit
    assert e.value.needed >= 16_000_000 and "disk full" in str(e.value)
    assert C.load_checkpoint(run)["step"] == 1
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]
    # Room again (a smaller state fits): the run goes on.
    C.save_checkpoint(run, {"step": 3, "x": torch.zeros(100_000)})
    assert C.load_checkpoint(run)["step"] == 3
    assert os.statvfs(small_disk).f_bfree > 0
