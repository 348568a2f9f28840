"""The service's worker processes: a fixed number of long-lived workers (``serve --workers N``,
or one per GPU with ``--gpus``), each running one job at a time and keeping its loaded guidance
models between jobs (``runs.warm``).

:class:`WorkerPool` owns the processes and their pipes. It spawns (one per slot; a GPU slot's
process sees only its GPU through ``CUDA_VISIBLE_DEVICES``, set in its environment before it
imports torch), hands out idle workers, tells, reads, cancels (with a grace period, then a kill),
releases a worker whose job is over, and reaps the ones that ended, starting a fresh process in
their slot. What a worker's messages and death mean for its job is the service's business.

With ``standby`` > 0 the pool also keeps that many spare processes started (torch imported,
nothing loaded, no job): a worker lost mid-job, or one that ended itself after a failure, is
replaced by a ready spare at once instead of a process that must start first (seconds), and a
new spare starts behind it. A spare takes over only a slot with its GPU and thread count.

A worker's life: spawned (``starting``) -> ``WorkerReady`` (idle) -> a job (busy) -> its final
message -> idle again, models still loaded. It leaves the pool when it dies (a crash, a kill
after a cancel's grace) or ends itself after a failed job (a failure releases everything:
the fresh process in its slot loads from scratch).
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .pipe import CancelJob, ExitWorker

log = logging.getLogger("stabledreamer.service")

CANCEL_GRACE_S = 5.0
"""How long a cancelled job's worker may take to stop at its next step before it is killed."""
SPARE_RETRY_S = 30.0
"""After a worker died while starting, wait this long before starting another in its slot."""
WORKER_ENV = "STABLEDREAMER_WORKER_SLOT"
"""Set in each worker's environment: its slot number (for its log lines)."""


@dataclass(frozen=True)
class Slot:
    """Where a worker runs: ``gpu`` is the CUDA device index it alone sees (None: the process's
    default device, the CPU on a machine without a GPU); ``threads`` its torch threads (0: torch's
    default)."""

    index: int
    gpu: str | None = None
    threads: int = 0


@dataclass
class WorkerHandle:
    process: Any
    conn: Any
    slot: Slot = field(default_factory=lambda: Slot(0))
    job: str | None = None
    ready: bool = False
    device: str = ""
    """What it said it runs on (``WorkerReady``)."""
    jobs_run: int = 0
    """Jobs this process started (the first is cold, the rest warm)."""
    loads: int = 0
    """Guidance models this process loaded (``WorkerStatus``): unchanged by a warm job."""
    cancelled: bool = False
    kill_at: float | None = None
    """A cancelled worker that has not stopped by then (it may be loading, not stepping) is
    killed: its job is over, and the next one should not wait."""
    stopping: bool = False
    finished: bool = False
    """The worker sent its final message (done/failed/cancelled/stopped) for its job."""
    retiring: bool = False
    """Told to exit (or about to exit by itself): no new job goes to it."""
    heard: float = field(default_factory=time.monotonic)
    """When it last said anything (a heartbeat at least every ``pipe.HEARTBEAT_S``)."""
    stalled: bool = False
    """No heartbeat for ``stall_s``: hung or stopped (SIGSTOP, a debugger, a dead disk)."""
    held: list = field(default_factory=list)
    """What a spare said while it waited (its ``WorkerReady``), handed on by ``read`` once it
    takes over a slot; its heartbeats are dropped."""

    @property
    def state(self) -> str:
        """``starting`` (importing torch), ``idle`` or ``busy``."""
        if self.job is not None:
            return "busy"
        return "idle" if self.ready and not self.retiring else "starting"


@dataclass
class Exited:
    """A worker that ended while it had a job."""

    worker: WorkerHandle
    exitcode: int | None
    last: list
    """What it said before it went (messages not read yet)."""


def plan_slots(workers: int = 1, gpus: list[str] | None = None, cpus: int | None = None):
    """The pool's slots: one per GPU index in ``gpus`` (``--gpus``), else ``workers`` CPU slots
    sharing the cores (each gets cores / workers torch threads, so N workers do not each start a
    thread per core)."""
    if gpus:
        return [Slot(i, gpu=str(g)) for i, g in enumerate(gpus)]
    cpus = cpus or os.cpu_count() or 1
    threads = max(1, cpus // workers) if workers > 1 else 0
    return [Slot(i, threads=threads) for i in range(workers)]


class WorkerPool:
    def __init__(
        self,
        target: Callable,
        prewarm: bool = True,
        slots: list[Slot] | None = None,
        launcher: Any = None,
        standby: int = 0,
    ) -> None:
        self.target = target
        """``target(conn, parent_pid, slot)``: the worker's entry point."""
        self.launcher = launcher
        """farm seam: ``launcher.start(slot) -> (process, conn)`` starts workers elsewhere (Ray
        actors, ``farm/launcher.py``) in place of local processes; None: local processes."""
        self.prewarm = prewarm
        """Keep every slot's worker started while idle (off: start one when a job needs it)."""
        self.slots = slots or [Slot(0)]
        self.workers: list[WorkerHandle] = []
        self.standby = standby
        """Spare local processes kept started (``serve --standby``; the farm has its own)."""
        self.spares: list[WorkerHandle] = []
        self._mp = mp.get_context("spawn")
        self._retry_at: dict[int, float] = {}
        self._spare_retry_at = 0.0

    # --- processes ---------------------------------------------------------------------------

    def spawn(self, slot: Slot) -> WorkerHandle:
        if self.launcher is not None:  # farm seam: a Ray actor, seen as a process and a pipe
            w = WorkerHandle(*self.launcher.start(slot), slot)
        else:
            w = self._adopt_spare(slot) or self._start_process(slot)
        self.workers.append(w)
        return w

    def _start_process(self, slot: Slot) -> WorkerHandle:
        parent, child = self._mp.Pipe(duplex=True)
        proc = self._mp.Process(
            target=self.target,
            args=(child, os.getpid(), slot),
            name=f"stabledreamer-worker-{slot.index}",
        )
        proc.daemon = True
        # The child's environment is the parent's at start(): its GPU is set before it runs a
        # line (torch reads CUDA_VISIBLE_DEVICES once, when CUDA first initialises).
        saved = {k: os.environ.get(k) for k in ("CUDA_VISIBLE_DEVICES", WORKER_ENV)}
        try:
            if slot.gpu is not None:
                os.environ["CUDA_VISIBLE_DEVICES"] = slot.gpu
            os.environ[WORKER_ENV] = str(slot.index)
            proc.start()
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        child.close()
        return WorkerHandle(proc, parent, slot)

    # --- spares (``standby``) ------------------------------------------------------------------

    def _adopt_spare(self, slot: Slot) -> WorkerHandle | None:
        """A live spare started for ``slot``'s GPU and threads, now in ``slot``; None if none."""
        self.tend_spares(start=False)
        for w in self.spares:
            if (w.slot.gpu, w.slot.threads) == (slot.gpu, slot.threads):
                self.spares.remove(w)
                log.info("worker %d: a standby process (pid %s) takes over", slot.index,
                         w.process.pid)  # fmt: skip
                w.slot = slot
                return w
        return None

    def tend_spares(self, start: bool = True) -> None:
        """Read what the spares said (keeping ``WorkerReady``, dropping heartbeats), drop dead
        ones and, with ``start``, start missing ones (one for each of the first ``standby``
        slots; after a spare died, not before ``SPARE_RETRY_S``)."""
        from .pipe import Heartbeat

        for w in list(self.spares):
            w.held += [m for m in self._read_conn(w) if not isinstance(m, Heartbeat)]
            if not w.process.is_alive() or w.conn.closed:
                log.error("a standby worker process ended (exit code %s)", w.process.exitcode)
                self.kill(w)
                self._spare_retry_at = time.monotonic() + SPARE_RETRY_S
        if not start or self.launcher is not None or time.monotonic() < self._spare_retry_at:
            return
        wanted = [self.slots[i % len(self.slots)] for i in range(self.standby)]
        for w in self.spares:
            for i, slot in enumerate(wanted):
                if (slot.gpu, slot.threads) == (w.slot.gpu, w.slot.threads):
                    del wanted[i]
                    break
        for slot in wanted:
            try:
                self.spares.append(self._start_process(slot))
            except OSError as e:
                log.error("cannot start a standby worker (%s)", e)
                self._spare_retry_at = time.monotonic() + SPARE_RETRY_S
                return

    def _free_slots(self) -> list[Slot]:
        used = {w.slot.index for w in self.workers}
        now = time.monotonic()
        return [
            s for s in self.slots if s.index not in used and now >= self._retry_at.get(s.index, 0)
        ]

    def fill(self) -> None:
        """Start a worker in every empty slot when prewarming (unless one just died starting),
        and then the spares (``standby``): an empty slot takes a ready spare first."""
        if self.prewarm:
            for slot in self._free_slots():
                try:
                    self.spawn(slot)
                except OSError as e:  # e.g. no descriptors left; try again later
                    log.error("cannot start a worker (%s)", e)
                    self._retry_at[slot.index] = time.monotonic() + SPARE_RETRY_S
                    break
        if self.standby:
            self.tend_spares()

    def idle(self) -> list[WorkerHandle]:
        return [w for w in self.workers if w.state == "idle"]

    def take(self, job: str) -> WorkerHandle | None:
        """A worker for ``job``: the first idle one (slot order), else one still starting (the
        job waits in its pipe until it is ready), else a new process in an empty slot, else
        None (every worker is busy)."""
        by_slot = sorted(self.workers, key=lambda w: w.slot.index)
        idle = [w for w in by_slot if w.state == "idle"]
        starting = [w for w in by_slot if w.state == "starting" and not w.retiring]
        if idle or starting:
            w = (idle or starting)[0]
        else:
            free = self._free_slots()
            if not free:
                return None
            w = self.spawn(free[0])  # raises OSError: the caller retries later
        w.job = job
        w.jobs_run += 1
        w.finished = w.cancelled = w.stopping = w.stalled = False
        w.kill_at = None
        w.heard = time.monotonic()
        return w

    def release(self, w: WorkerHandle) -> None:
        """Its job is over (it sent its final message): idle again, models kept."""
        w.job = None
        w.cancelled = w.stopping = w.stalled = False
        w.kill_at = None

    def retire(self, w: WorkerHandle) -> None:
        """No more jobs for it: it exits (an idle one at once; one with a job when it ends)."""
        w.retiring = True
        self.tell(w, ExitWorker())

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
        held, w.held = w.held, []
        return held + self._read_conn(w, most)

    def _read_conn(self, w: WorkerHandle, most: int = 200) -> list:
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
        for held in (self.workers, self.spares):
            if w in held:
                held.remove(w)

    def kill_all(self) -> None:
        for w in [*self.workers, *self.spares]:
            self.kill(w)

    def reap(self, stopping: bool = False) -> list[Exited]:
        """Kill cancelled workers past their grace; collect the ones that ended (their slots
        get a fresh process at the next ``fill``). Returns those that had a job (a worker that
        died while starting is logged here)."""
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
            if w.job is not None:
                out.append(Exited(w, code, last))
            elif not w.ready and not stopping:
                log.error("a worker process died while starting (exit code %s)", code)
                self._retry_at[w.slot.index] = time.monotonic() + SPARE_RETRY_S
        return out

    def fileno_list(self) -> list[int]:
        return [w.conn.fileno() for w in self.workers if not w.conn.closed]

    def describe(self) -> list[dict[str, Any]]:
        """One entry per slot, in slot order: device, state, job, jobs run and models loaded by
        its current process (an empty slot, waiting to restart a worker, is ``starting``)."""
        by_slot = {w.slot.index: w for w in self.workers}
        out = []
        for s in self.slots:
            w = by_slot.get(s.index)
            device = w.device if w and w.device else ("cuda" if s.gpu is not None else "cpu")
            if s.gpu is not None:
                device = f"GPU {s.gpu}: {device}"
            out.append(
                {
                    "device": device,
                    "state": w.state if w else ("starting" if self.prewarm else "idle"),
                    "job": w.job if w else None,
                    "jobs_run": w.jobs_run if w else 0,
                    "loads": w.loads if w else 0,
                }
            )
        return out
