"""The service's worker processes: one per running job, plus one idle spare (torch already
imported) so the next job starts at once.

:class:`WorkerPool` owns the processes and their pipes. It spawns, hands out, tells, reads,
cancels (with a grace period, then a kill) and reaps them; what a worker's messages and death
mean for its job is the service's business.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .pipe import CancelJob

log = logging.getLogger("stabledreamer.service")

CANCEL_GRACE_S = 5.0
"""How long a cancelled job's worker may take to stop at its next step before it is killed."""
SPARE_RETRY_S = 30.0
"""After a spare worker died while starting, wait this long before starting another."""


@dataclass
class WorkerHandle:
    process: Any
    conn: Any
    job: str | None = None
    ready: bool = False
    cancelled: bool = False
    kill_at: float | None = None
    """A cancelled worker that has not stopped by then (it may be loading, not stepping) is
    killed: its job is over, and the next one should not wait."""
    stopping: bool = False
    finished: bool = False
    """The worker sent its final message (done/failed/cancelled/stopped)."""
    heard: float = field(default_factory=time.monotonic)
    """When it last said anything (a heartbeat at least every ``pipe.HEARTBEAT_S``)."""
    stalled: bool = False
    """No heartbeat for ``stall_s``: hung or stopped (SIGSTOP, a debugger, a dead disk)."""


@dataclass
class Exited:
    """A worker that ended while it had a job."""

    worker: WorkerHandle
    exitcode: int | None
    last: list
    """What it said before it went (messages not read yet)."""


class WorkerPool:
    def __init__(self, target: Callable, prewarm: bool = True, launcher: Any = None) -> None:
        self.target = target
        """``target(conn, parent_pid)``: the worker's entry point."""
        self.launcher = launcher
        """farm seam: ``launcher.start() -> (process, conn)`` starts workers elsewhere (Ray
        actors, ``farm/launcher.py``) in place of local processes; None: local processes."""
        self.prewarm = prewarm
        self.workers: list[WorkerHandle] = []
        self.spare: WorkerHandle | None = None
        self._mp = mp.get_context("spawn")
        self._spare_retry_at = 0.0

    def spawn(self) -> WorkerHandle:
        if self.launcher is not None:  # farm seam: a Ray actor, seen as a process and a pipe
            w = WorkerHandle(*self.launcher.start())
            self.workers.append(w)
            return w
        parent, child = self._mp.Pipe(duplex=True)
        proc = self._mp.Process(
            target=self.target, args=(child, os.getpid()), name="stabledreamer-worker"
        )
        proc.daemon = True
        proc.start()
        child.close()
        w = WorkerHandle(proc, parent)
        self.workers.append(w)
        return w

    def take(self, job: str) -> WorkerHandle:
        """A worker for ``job``: the spare when there is one, else a new process."""
        w = self.spare or self.spawn()
        self.spare = None
        w.job = job
        return w

    def keep_spare(self) -> None:
        """Start a spare when prewarming and there is none (unless one just died starting)."""
        if self.prewarm and self.spare is None and time.monotonic() >= self._spare_retry_at:
            try:
                self.spare = self.spawn()
            except OSError as e:  # e.g. no descriptors left; try again later
                log.error("cannot start a spare worker (%s)", e)
                self._spare_retry_at = time.monotonic() + SPARE_RETRY_S

    def running(self) -> list[WorkerHandle]:
        return [w for w in self.workers if w.job is not None]

    def worker_of(self, job: str) -> WorkerHandle | None:
        for w in self.workers:
            if w.job == job:
                return w
        return None

    def tell(self, w: WorkerHandle, msg: object) -> None:
        try:
            w.conn.send(msg)
        except (OSError, ValueError):
            pass  # it is dying; reap() deals with it

    def cancel(self, w: WorkerHandle, grace_s: float = CANCEL_GRACE_S) -> None:
        """Ask it to stop; kill it after ``grace_s`` (at once when it is stalled: a stalled
        worker reads nothing)."""
        w.cancelled = True
        w.kill_at = time.monotonic() + (0.0 if w.stalled else grace_s)
        self.tell(w, CancelJob())

    def read(self, w: WorkerHandle, most: int = 200) -> list:
        """What the worker has said (at most ``most`` messages; the rest waits)."""
        out = []
        try:
            for _ in range(most):
                if w.conn.closed or not w.conn.poll():
                    break
                out.append(w.conn.recv())
        except (EOFError, OSError):
            w.conn.close()
        if out:
            w.heard = time.monotonic()
        return out

    def watch(self, stall_s: float) -> tuple[list[WorkerHandle], list[WorkerHandle]]:
        """Workers with a job that just stalled (silent for ``stall_s``), and those that were
        stalled and beat again."""
        now = time.monotonic()
        stalled, back = [], []
        for w in self.running():
            silent = now - w.heard > stall_s
            if silent != w.stalled:
                w.stalled = silent
                (stalled if silent else back).append(w)
        return stalled, back

    def kill(self, w: WorkerHandle) -> None:
        if w.process.is_alive():
            w.process.kill()
        w.process.join(5)
        w.conn.close()
        if w in self.workers:
            self.workers.remove(w)
        if self.spare is w:
            self.spare = None

    def kill_all(self) -> None:
        for w in list(self.workers):
            self.kill(w)

    def reap(self, stopping: bool = False) -> list[Exited]:
        """Kill cancelled workers past their grace; collect the ones that ended. Returns those
        that had a job (a spare that died is logged here)."""
        now = time.monotonic()
        out = []
        for w in list(self.workers):
            if w.kill_at is not None and now > w.kill_at and w.process.is_alive():
                log.info("job %s: the cancelled worker did not stop in time; killed", w.job)
                w.process.kill()
                w.process.join(5)
            if w.process.is_alive() and not w.conn.closed:
                continue
            last = self.read(w)  # anything it said last
            w.process.join(1)
            code = w.process.exitcode
            if w.process.is_alive():  # pipe closed but still running: end it
                w.process.kill()
                w.process.join(5)
            w.conn.close()
            self.workers.remove(w)
            if self.spare is w:
                self.spare = None
            if w.job is not None:
                out.append(Exited(w, code, last))
            elif not w.ready and not stopping:
                log.error("a worker process died while starting (exit code %s)", code)
                self._spare_retry_at = time.monotonic() + SPARE_RETRY_S
        return out

    def fileno_list(self) -> list[int]:
        return [w.conn.fileno() for w in self.workers if not w.conn.closed]
