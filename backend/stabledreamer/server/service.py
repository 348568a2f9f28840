"""The ROUTER loop: commands from any number of clients, a job queue fair between clients,
long-lived worker processes (one job each at a time), events to every client that follows a job.

The parts: :class:`~.delivery.Delivery` (what is sent to each client, flow control),
:class:`~.pool.WorkerPool` (the worker processes), :class:`~.queue.FairQueue` (which queued job
starts next), :class:`~.submit.SubmitCheck` (a ``submit`` to a job record),
:class:`~.uploads.Uploads` (large submits checked and written on threads, off this loop),
:class:`~.jobs.JobStore` (records on disk). The service ties them together: it reads commands
and worker messages and decides what they mean for each job.
"""

from __future__ import annotations

import logging
import signal
import time
from dataclasses import asdict

import zmq

from stabledreamer_protocol import (
    Attach,
    Cancel,
    DebugImage,
    Delete,
    Detach,
    Error,
    ErrorCode,
    Fetch,
    GetLogs,
    Hello,
    Jobs,
    JobState,
    ListJobs,
    Logs,
    Message,
    Ping,
    Pong,
    PreviewAck,
    Progress,
    ProtocolError,
    Status,
    Submit,
    WorkerInfo,
    codec,
)
from stabledreamer_protocol.keys import operator_keys

from ..atomic import DiskFullError
from . import pipe, views
from .access import Access
from .delivery import SOCKET_HWM, Delivery, Peer, PeerGone
from .followups import resolve_parent
from .jobs import JobRecord, JobStore
from .logbuffer import LogBuffer
from .models_service import ModelsService
from .pool import Exited, Slot, WorkerHandle, WorkerPool, plan_slots
from .queue import FairQueue
from .retention import apply_retention
from .settings import ServiceConfig
from .space import SpaceWait
from .submit import SubmitCheck
from .uploads import Finished, Staged, Uploads, stage
from .worker import worker_main

log = logging.getLogger("stabledreamer.service")
wlog = logging.getLogger("stabledreamer.worker")

MAX_CRASHES = 2
"""A job whose worker process dies (not a reported failure) is resumed this many times."""
ACTIVE = ("queued", "running")
RETENTION_INTERVAL_S = 60.0
"""How often the retention policy runs (and once at start)."""


class Service:
    def __init__(self, cfg: ServiceConfig) -> None:
        self.cfg = cfg
        self.limits = cfg.limits
        self.store = JobStore(cfg.state)
        self.delivery = Delivery(self._send, cfg.limits, cfg.preview_points)
        slots = plan_slots(cfg.workers, cfg.gpus)
        self.pool = WorkerPool(worker_main, prewarm=cfg.prewarm, slots=slots, standby=cfg.standby)
        self.fair = FairQueue()
        self.submits = SubmitCheck(cfg.limits, self.store, cfg.model_ids(), cfg.model_set)
        self.uploads = Uploads(self.submits, self.store, cfg.upload_offload_bytes)
        self.device = "cpu"
        self.stopping = False
        self.pending_delete: set[str] = set()
        self.space = SpaceWait(self.store.root)
        self.access = Access(cfg.curve)
        self.logbuffer = LogBuffer()
        self.models = ModelsService(self)
        self._last_housekeeping = 0.0
        self._last_retention = -RETENTION_INTERVAL_S
        self._progress_dirty: set[str] = set()
        self.bad_messages = 0
        self._bad_logged = 0
        self.context: zmq.Context | None = None
        self.socket: zmq.Socket | None = None
        self.auth = None

    # --- life cycle ---------------------------------------------------------------------------

    def open(self) -> None:
        from .security import check_bind, enable_curve

        check_bind(self.cfg.bind, self.cfg.curve)
        if self.cfg.farm is not None:  # farm seam: workers are Ray actors (server/farm)
            from .farm import start_launcher

            self.pool.launcher = start_launcher(self.cfg.farm)
            # one slot per job the cluster runs at once (each actor brings its own GPU)
            self.pool.slots = [Slot(i) for i in range(self.pool.launcher.capacity)]
        self.context = zmq.Context()
        sock = self.context.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        sock.setsockopt(zmq.MAXMSGSIZE, self.limits.max_message_bytes)
        sock.setsockopt(zmq.SNDHWM, SOCKET_HWM)
        # A connection that has not finished its (CURVE) handshake by then is dropped, so idle
        # unauthenticated connections cannot hold the process's descriptors for long.
        sock.setsockopt(zmq.HANDSHAKE_IVL, int(self.cfg.handshake_s * 1000))
        sock.setsockopt(zmq.RCVHWM, 1000)
        try:
            if self.cfg.curve:
                self.auth, files = enable_curve(self.context, sock, self.cfg.keys)
                self.access.operators = operator_keys(files)
                log.info(
                    "CURVE on: admitting the client keys in %s, %d operator key(s) in %s",
                    files.authorized,
                    len(self.access.operators),
                    files.operators,
                )
            else:
                log.warning("CURVE off (--no-curve): any local user can use this service")
            sock.bind(self.cfg.bind)
        except BaseException:
            sock.close(0)
            self.close()
            raise
        self.socket = sock
        interrupted = self.store.load()
        for rec in interrupted:
            log.info("job %s was interrupted; it resumes", rec.job, extra={"job": rec.job})
        log.info(
            "listening on %s, state in %s, %d job(s) known",
            self.cfg.bind,
            self.cfg.state,
            len(self.store.records),
        )

    def close(self) -> None:
        self.pool.kill_all()
        if getattr(self.pool, "launcher", None) is not None:  # farm seam
            self.pool.launcher.close()
        self.uploads.close()
        self.models.close()
        if self.socket is not None:
            self.socket.close(0)
            self.socket = None
        if self.auth is not None:
            self.auth.stop()
            self.auth = None
        if self.context is not None:
            self.context.term()
            self.context = None

    def request_stop(self, *_args) -> None:
        self.stopping = True

    def run(self) -> None:
        """Serve until SIGTERM/SIGINT (``request_stop``), then shut down cleanly."""
        try:
            while not self.stopping:
                self.step()
            self.shutdown()
        finally:
            self.close()

    def step(self, timeout_ms: int | None = None) -> None:
        poller = zmq.Poller()
        poller.register(self.socket, zmq.POLLIN)
        poller.register(self.uploads.fileno(), zmq.POLLIN)
        poller.register(self.models.fileno(), zmq.POLLIN)
        for fd in self.pool.fileno_list():
            poller.register(fd, zmq.POLLIN)
        if timeout_ms is None:
            timeout_ms = 20 if self.delivery.pending else 200
        ready = dict(poller.poll(timeout_ms))
        if self.socket in ready:
            self._read_clients()
        for done in self.uploads.finished():
            self._on_uploaded(done)
        self.models.pump()
        for w in list(self.pool.workers):
            for msg in self.pool.read(w):
                self._on_worker(w, msg)
        for exited in self.pool.reap(self.stopping):
            self._on_exit(exited)
        self._schedule()
        self.delivery.flush_all()
        now = time.monotonic()
        if now - self._last_housekeeping > 1.0:
            self._last_housekeeping = now
            self._housekeeping(now)

    def shutdown(self) -> None:
        """Stop the running job at its next step (it checkpoints; it resumes on restart)."""
        log.info("shutting down")
        for w in list(self.pool.workers):
            if w.job is None or w.cancelled or w.stalled:  # nothing to wait for
                self.pool.kill(w)
            elif w.job is not None and not w.finished:
                w.stopping = True
                self.pool.tell(w, pipe.StopJob())
        deadline = time.monotonic() + self.cfg.stop_timeout_s
        while self.pool.running() and time.monotonic() < deadline:
            self.step(timeout_ms=50)
        for w in list(self.pool.workers):
            if w.job is not None:
                log.warning("job %s did not stop in time; killed", w.job)
            self.pool.kill(w)
        end = time.monotonic() + 1.0  # last job_state messages
        while self.delivery.outbox_waiting and time.monotonic() < end:
            self.delivery.flush_all()
            time.sleep(0.01)
        log.info("stopped")

    def _send(self, identity: bytes, frames: list) -> bool:
        try:
            self.socket.send_multipart([identity, *frames], zmq.NOBLOCK, copy=False)
            return True
        except zmq.Again:
            return False
        except zmq.ZMQError as e:
            if e.errno == zmq.EHOSTUNREACH:
                raise PeerGone from None
            raise

    # --- workers ------------------------------------------------------------------------------

    def _on_exit(self, exited: Exited) -> None:
        w, code = exited.worker, exited.exitcode
        for msg in exited.last:
            self._on_worker(w, msg)
        job = w.job
        if job is None:  # its final message was among its last words: the job is over
            return
        rec = self.store.get(job)
        if self._forget_deleted(job):
            return
        if rec is None or rec.state != "running":
            return
        # farm seam: a lost Ray node is not the job's fault; it does not count as a crash
        launcher = getattr(self.pool, "launcher", None)
        lost = launcher.lost(w) if launcher is not None else None
        if w.stopping:
            self._set_state(rec, "queued", "interrupted by a shutdown; resumes on restart")
        elif lost or rec.crashes < MAX_CRASHES:
            rec.crashes += not lost
            why = lost or (f"worker {w.slot.index}'s process ended unexpectedly (exit code {code})")
            log.warning("job %s: %s; it resumes from its last checkpoint", job, why,
                        extra={"job": job})  # fmt: skip
            self._set_state(rec, "queued", f"{why}; resuming from the last checkpoint")
        else:
            self._fail(
                rec,
                "job_failed",
                f"the worker process ended unexpectedly (exit code {code}), "
                f"{rec.crashes + 1} times; the job is given up",
            )

    def _forget_deleted(self, job: str) -> bool:
        """A deleted job's worker is done with it: its files go now. True if it was deleted."""
        if job not in self.pending_delete:
            return False
        self.pending_delete.discard(job)
        if self.store.get(job) is None:
            self.store.remove_files(job)
        return True

    def _job_over(self, w: WorkerHandle, final: object) -> None:
        """``w`` sent its job's final message: it takes the next job, or (after a failure)
        ends by itself and a fresh process takes its slot."""
        job = w.job
        if isinstance(final, pipe.JobFailed):
            w.retiring = True
        self.pool.release(w)
        if job is not None:
            self._forget_deleted(job)

    def _schedule(self) -> None:
        if self.stopping:
            return
        self.pool.fill()
        held = self.space.holds
        queued = [r for r in self.store.queued() if not held(r.job) and not self.models.holds(r)]
        started = False
        cap = self.cfg.max_running
        for rec in self.fair.order(queued):
            if cap is not None and len(self.pool.running()) >= cap:
                break
            try:
                w = self.pool.take(rec.job)
            except OSError as e:  # e.g. no descriptors left: the job waits, the service goes on
                log.error("cannot start a worker for job %s (%s); retrying", rec.job, e)
                break
            if w is None:  # every worker is busy (or starting)
                break
            self.fair.served(rec.owner)
            self.pool.tell(w, pipe.RunJob(self._spec(rec)))
            rec.starts += 1
            rec.error_code = ""
            self._set_state(rec, "running", "")
            log.info("job %s started on worker %d (pid %s, %s)", rec.job, w.slot.index,
                     getattr(w.process, "pid", None), w.device or "starting",
                     extra={"job": rec.job})  # fmt: skip
            started = True
        if started:
            for other in self.store.queued():  # everyone behind moved up
                self.delivery.broadcast(other.job, self._job_state(other))
            self.fair.forget(r.owner for r in self.store.records.values() if r.state in ACTIVE)

    def _spec(self, rec: JobRecord) -> pipe.JobSpec:
        return pipe.JobSpec(
            job=rec.job,
            job_dir=str(self.store.dir(rec.job)),
            run_dir=str(self.store.run_dir(rec.job)),
            kind=rec.kind,
            preset=rec.preset,
            overrides=rec.overrides,
            seed=rec.seed,
            prompt=rec.prompt,
            negative=rec.negative,
            models=self.cfg.model_ids(),
            model_set=rec.model_set,
            target_file=rec.target_file,
            init_file=rec.init_file,
            preview_points=self.delivery.preview_cap(rec.job),
            preview_interval_s=self.cfg.preview_interval_s,
            parent=rec.parent,
            mode=rec.mode,
            steps=rec.steps,
        )

    def _on_worker(self, w: WorkerHandle, msg: object) -> None:
        if isinstance(msg, pipe.Heartbeat):
            return
        if isinstance(msg, pipe.WorkerReady):
            w.ready = True
            w.device = msg.device
            log.info("worker %d ready (pid %s): %s", w.slot.index, w.process.pid, msg.device)
            if self.device == "cpu" or w.slot.index == 0:
                self.device = msg.device
            return
        if isinstance(msg, pipe.WorkerStatus):
            w.loads = msg.loads
            return
        job = w.job
        rec = self.store.get(job) if job is not None else None
        if isinstance(msg, pipe.LogLine):
            wlog.log(msg.level, "job %s: %s", job, msg.text, extra={"job": job})
            return
        if isinstance(msg, pipe.FINAL):
            w.finished = True
            cancelled = w.cancelled
            self._job_over(w, msg)
            if cancelled:
                return
        if rec is None or rec.state != "running" or w.cancelled:
            return  # cancelled or deleted meanwhile: the rest is of no interest
        if isinstance(msg, pipe.JobStarted):
            if msg.resumed:
                log.info("job %s resumed from its checkpoint", job, extra={"job": job})
        elif isinstance(msg, pipe.ProgressReport):
            stage_changed = msg.stage != rec.stage
            rec.stage, rec.step, rec.total = msg.stage, msg.step, msg.total
            self._progress_dirty.add(rec.job)
            if stage_changed:
                self.delivery.broadcast(job, self._job_state(rec))
            event = Progress(job=job, **asdict(msg))
            self.delivery.broadcast(job, event, kind="progress")
        elif isinstance(msg, pipe.PreviewFrame):
            self.delivery.broadcast_preview(job, msg)
        elif isinstance(msg, pipe.DebugFrame):
            event = DebugImage(job=job, **{k: getattr(msg, k) for k in msg.__dataclass_fields__})
            self.delivery.broadcast(job, event, kind="debug")
        elif isinstance(msg, pipe.JobDone):
            rec.result = {**msg.manifest, "metrics": views.json_safe(msg.metrics)}
            self._set_state(rec, "done", "")
            log.info("job %s done: %s", job, views.summary(msg.metrics), extra={"job": job})
            self.delivery.broadcast(job, views.result(rec))
        elif isinstance(msg, pipe.JobFailed) and msg.code == ErrorCode.DISK_FULL:
            self._wait_for_space(rec, msg.message, msg.needed_bytes)
        elif isinstance(msg, pipe.JobFailed):
            self._fail(rec, msg.code, msg.message)
        elif isinstance(msg, pipe.JobCancelled):
            self._set_state(rec, "cancelled", "cancelled")
        elif isinstance(msg, pipe.JobStopped):
            self._set_state(rec, "queued", "interrupted by a shutdown; resumes on restart")

    def _wait_for_space(self, rec: JobRecord, message: str, needed: int) -> None:
        """A job stopped by a full disk: queued again and held until there is room, then it
        resumes from its last good checkpoint; its followers get a ``disk_full`` error."""
        self.space.hold(rec.job, needed)
        log.error("job %s: %s", rec.job, message, extra={"job": rec.job})
        self.delivery.broadcast(
            rec.job, Error(job=rec.job, code=ErrorCode.DISK_FULL, message=message[:4000])
        )
        self._set_state(rec, "queued", f"{message} It resumes when there is room."[:4000])

    def _fail(self, rec: JobRecord, code: str, message: str) -> None:
        rec.error_code = code
        log.warning("job %s failed: [%s] %s", rec.job, code, message, extra={"job": rec.job})
        self.delivery.broadcast(rec.job, Error(job=rec.job, code=code, message=message[:4000]))
        self._set_state(rec, "failed", message)

    def _set_state(self, rec: JobRecord, state: str, message: str) -> None:
        rec.state, rec.message = state, message[:4000]
        self.store.save(rec)
        self._progress_dirty.discard(rec.job)
        self.delivery.broadcast(rec.job, self._job_state(rec))

    # --- messages -----------------------------------------------------------------------------

    def _job_state(self, rec: JobRecord, re: str | None = None) -> JobState:
        position = None
        if rec.state == "queued":
            position = self.fair.positions(self.store.queued()).get(rec.job)
        return views.job_state(rec, position, re)

    def _workers(self, peer: Peer) -> list[WorkerInfo]:
        """The workers as ``hello``/``status`` show them: the jobs of other clients are counted
        (busy), not named."""
        out = []
        for entry in self.pool.describe():
            rec = self.store.get(entry["job"]) if entry["job"] else None
            if rec is None or not self.access.may(peer, rec):
                entry["job"] = None
            out.append(WorkerInfo(**entry))
        return out

    def _read_clients(self) -> None:
        for _ in range(500):  # then let workers and flushing have a turn
            try:
                frames = self.socket.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            try:
                msg = codec.decode(frames[1:], limits=self.limits, direction="command")
            except ProtocolError as e:
                msg = e
            peer = self.delivery.peer(frames[0].bytes)
            self.access.identify(peer, frames[1] if len(frames) > 1 else None)
            if self.uploads.holds(peer) and not isinstance(msg, (Hello, Ping, ProtocolError)):
                if not self.uploads.wait(peer, msg):  # behind its own upload, in order
                    self.delivery.reply(peer, self._too_many_waiting(msg))
                continue
            self._read_one(peer, msg)

    def _read_one(self, peer: Peer, msg: Message | ProtocolError) -> None:
        """Answer one message (or the decoder's refusal of one); never raises."""
        if isinstance(msg, ProtocolError):
            self.bad_messages += 1
            log.debug("bad message: %s", msg)
            self.delivery.reply(peer, Error.from_exception(msg))
            return
        self._answering(peer, msg, self._dispatch, peer, msg)

    def _answering(self, peer: Peer, msg: Message, handler, *args) -> None:
        """Run a message's handler; its error (or a bug) becomes the error reply."""
        try:
            handler(*args)
        except ProtocolError as e:
            self.delivery.reply(peer, Error.from_exception(e, re=msg.id, job=msg.job))
        except Exception as e:  # a bug must not take the service down
            log.exception("internal error handling %s", msg.TYPE)
            self.delivery.reply(
                peer,
                Error(
                    re=msg.id,
                    job=msg.job,
                    code=ErrorCode.INTERNAL,
                    message=f"{type(e).__name__}: {e}"[:4000],
                ),
            )

    def _too_many_waiting(self, msg: Message) -> Error:
        return Error(
            re=msg.id,
            job=msg.job,
            code=ErrorCode.BUSY,
            message="too many messages (or upload bytes) already wait behind this client's upload",
            hint="Wait for the submit's reply before sending more.",
        )

    def _dispatch(self, peer: Peer, msg: Message) -> None:
        handler = {
            Hello: self._on_hello,
            Ping: lambda p, m: self.delivery.reply(p, Pong(re=m.id)),
            Submit: self._on_submit,
            Cancel: self._on_cancel,
            Status: self._on_status,
            ListJobs: lambda p, m: self.delivery.reply(
                p, self._jobs(p, m.id, m.offset, m.limit, m.active)
            ),
            Attach: self._on_attach,
            Detach: self._on_detach,
            PreviewAck: lambda p, m: self.delivery.ack(p, m.job),
            Fetch: self._on_fetch,
            Delete: self._on_delete,
            GetLogs: self._on_get_logs,
        }.get(type(msg)) or self.models.handlers.get(type(msg))
        if handler is None:
            raise ProtocolError(ErrorCode.UNEXPECTED_TYPE, f"{msg.TYPE!r} is not a command")
        handler(peer, msg)

    def _on_hello(self, peer: Peer, msg: Hello) -> None:
        features = ["reconstruct", "demo", "preview_ack", "fetch", "delete", "logs", "init_points"]
        features.append("workers")  # since 1.4
        features.append("followups")  # submit.parent/mode (refine, continue), since 1.5
        features += ["list_pages", "curve"] if self.cfg.curve else ["list_pages"]
        features.append("models")
        reply = views.hello(msg.id, self.device, self.cfg.models, features, self.limits)
        reply.queue_length = self.store.active_count()
        reply.workers = self._workers(peer)
        self.delivery.reply(peer, reply)

    def _known(self, peer: Peer, msg: Message) -> JobRecord:
        return self.access.known(self.store, peer, msg)

    def _follow(self, peer: Peer, job: str, preview_points: int | None) -> None:
        self.delivery.follow(peer, job, preview_points)
        w = self.pool.worker_of(job)
        if w is not None:
            self.pool.tell(w, pipe.PreviewPoints(self.delivery.preview_cap(job)))

    def _on_submit(self, peer: Peer, msg: Submit) -> None:
        rec = self.store.get(msg.job)
        if rec is not None and not self.access.may(peer, rec):
            raise ProtocolError(
                ErrorCode.FORBIDDEN, f"job {msg.job!r} belongs to another client key"
            )
        if msg.parent is None and self.uploads.offloads(msg):  # checks and files on a thread
            self.uploads.start(peer, msg)
            return
        digest = msg.digest()
        if not self._resubmitted(peer, msg, digest):
            parent = resolve_parent(self.store, self.access, peer, msg)  # refine / continue
            self._accept(peer, msg, stage(msg, self.submits, self.store, parent))

    def _on_uploaded(self, done: Finished) -> None:
        """An upload thread finished a submit: accept it (or say why not), then answer what
        the client sent after it."""
        peer, msg, staged = done.peer, done.msg, done.staged

        def finish() -> None:
            try:
                if not (staged.digest and self._resubmitted(peer, msg, staged.digest)):
                    self._accept(peer, msg, staged)
            finally:
                staged.discard()  # unless adopted: a resubmission's, or a refused one's

        self._answering(peer, msg, finish)
        while (item := self.uploads.next_waiting(peer)) is not None:
            self._read_one(*item)

    def _resubmitted(self, peer: Peer, msg: Submit, digest: str) -> bool:
        """A submit of a known job id: harmless when identical (answered with its state),
        ``job_conflict`` otherwise. False for a new job."""
        rec = self.store.get(msg.job)
        if rec is not None and not self.access.may(peer, rec):
            raise ProtocolError(
                ErrorCode.FORBIDDEN, f"job {msg.job!r} belongs to another client key"
            )
        if rec is None and msg.job not in self.pending_delete:
            return False
        if rec is None or rec.digest != digest:
            raise ProtocolError(
                ErrorCode.JOB_CONFLICT,
                f"job {msg.job!r} exists with a different request",
            )
        self._follow(peer, rec.job, msg.preview_points)
        self.delivery.reply(peer, self._job_state(rec, re=msg.id))
        if rec.state == "done":
            self.delivery.reply(peer, views.result(rec))
        return True

    def _accept(self, peer: Peer, msg: Submit, staged: Staged) -> None:
        """A new job from a checked submit whose files are staged: record it, queue it, answer."""
        try:
            if staged.error is not None:
                raise staged.error
            self.models.admit(msg, staged.prepared)  # models_missing, unless it waits
            rec = self.submits.record(msg, staged.digest, staged.prepared)
            rec.owner = peer.owner
            self.store.adopt(rec, staged.folder)
            staged.folder = None
        except (DiskFullError, OSError) as e:
            log.error("job %s not accepted: %s", msg.job, e, extra={"job": msg.job})
            code = ErrorCode.DISK_FULL if isinstance(e, DiskFullError) else ErrorCode.INTERNAL
            raise ProtocolError(code, str(e)[:4000]) from None
        finally:
            staged.discard()
        log.info(
            "job %s queued: %s of %s, preset %s, seed %d",
            rec.job,
            rec.kind,
            rec.target_name,
            rec.preset,
            rec.seed,
            extra={"job": rec.job},
        )
        self._follow(peer, rec.job, msg.preview_points)
        self.delivery.reply(peer, self._job_state(rec, re=msg.id))

    def _on_cancel(self, peer: Peer, msg: Cancel) -> None:
        rec = self._known(peer, msg)
        if rec.state in ACTIVE:
            w = self.pool.worker_of(rec.job)
            if w is not None:
                self.pool.cancel(w, self.cfg.cancel_grace_s)
            log.info("job %s cancelled", rec.job, extra={"job": rec.job})
            self._set_state(rec, "cancelled", "cancelled")
        self.delivery.reply(peer, self._job_state(rec, re=msg.id))

    def _on_status(self, peer: Peer, msg: Status) -> None:
        reply = self._job_state(self._known(peer, msg), re=msg.id)
        reply.workers = self._workers(peer)
        self.delivery.reply(peer, reply)

    def _on_attach(self, peer: Peer, msg: Attach) -> None:
        rec = self._known(peer, msg)
        self._follow(peer, rec.job, msg.preview_points)
        self.delivery.reply(peer, self._job_state(rec, re=msg.id))
        if rec.state == "done":
            self.delivery.reply(peer, views.result(rec))

    def _on_detach(self, peer: Peer, msg: Detach) -> None:
        rec = self._known(peer, msg)
        self.delivery.unfollow(peer, rec.job)
        self.delivery.reply(peer, self._job_state(rec, re=msg.id))

    def _on_fetch(self, peer: Peer, msg: Fetch) -> None:
        rec = self._known(peer, msg)
        info, offset, size = views.chunk_of(rec, msg)
        if not self.delivery.room(peer, size):
            raise ProtocolError(
                ErrorCode.BUSY,
                f"{peer.outbox_bytes} bytes are already waiting for this client; "
                "read them before fetching more",
            )
        if not rec.fetched:  # the retention policy may now treat it like any finished job
            rec.fetched = True
            self.store.save(rec)
        with open(self.store.run_dir(rec.job) / info.name, "rb") as f:
            f.seek(offset)
            data = f.read(size)
        self.delivery.reply(peer, views.result_chunk(rec, msg, info, offset, data))

    def _on_delete(self, peer: Peer, msg: Delete) -> None:
        rec = self._known(peer, msg)
        w = self.pool.worker_of(rec.job)
        if w is not None and not w.finished:
            self.pool.cancel(w, self.cfg.cancel_grace_s)
            self.pending_delete.add(rec.job)  # its files go when the worker has exited
            self.store.records.pop(rec.job, None)
            (self.store.dir(rec.job) / "job.json").unlink(missing_ok=True)
        else:
            self.store.delete(rec.job)
        self.delivery.unfollow_all(rec.job)
        log.info("job %s deleted", rec.job, extra={"job": rec.job})
        self.delivery.reply(peer, self._jobs(peer, msg.id))

    def _on_get_logs(self, peer: Peer, msg: GetLogs) -> None:
        if msg.job is not None:
            self._known(peer, msg)
        mine = self.access.log_filter(self.store, peer)
        budget = max(1024, self.limits.max_header_bytes - 4096)
        lines, cursor = self.logbuffer.since(msg.since, msg.max_lines, msg.job, budget, mine)
        self.delivery.reply(peer, Logs(re=msg.id, job=msg.job, lines=lines, cursor=cursor))

    def _jobs(
        self, peer: Peer, re: str | None, offset: int = 0, limit: int | None = None,
        active: bool = False,
    ) -> Jobs:  # fmt: skip
        return views.listing(self.store, self.access, peer, re, offset, limit, active, self.limits)

    # --- housekeeping ---------------------------------------------------------------------------

    def _apply_retention(self) -> None:
        held = self.pool.worker_of  # a job whose worker is still winding down waits
        for job in apply_retention(self.store, self.cfg.retention, lambda j: held(j) is not None):
            self.delivery.unfollow_all(job)

    def _watch_heartbeats(self) -> None:
        stalled, back = self.pool.watch(self.cfg.stall_s)
        for w in stalled + back:
            rec = self.store.get(w.job)
            if rec is None or rec.state != "running":
                continue
            what = f"stalled: its worker has not answered for {self.cfg.stall_s:.0f} s"
            if w in stalled:
                log.warning("job %s %s", rec.job, what, extra={"job": rec.job})
            self._set_state(rec, "running", what if w in stalled else "")

    def _housekeeping(self, now: float) -> None:
        if self.bad_messages != self._bad_logged:
            log.info("%d malformed messages refused so far", self.bad_messages)
            self._bad_logged = self.bad_messages
        for job in list(self._progress_dirty):  # progress reaches the record at most once a second
            rec = self.store.get(job)
            if rec is not None:
                self.store.save(rec)
        self._progress_dirty.clear()
        self.store.retry_unsaved()
        self._watch_heartbeats()
        for job in self.space.release(self.store):
            log.info("job %s: there is room again; it resumes", job, extra={"job": job})
        if now - self._last_retention > RETENTION_INTERVAL_S:
            self._last_retention = now
            self._apply_retention()
        self.delivery.forget_idle(now, lambda j: (r := self.store.get(j)) and r.state in ACTIVE)


def serve(cfg: ServiceConfig) -> int:
    """Run the service in this process until SIGTERM or SIGINT."""
    from .security import raise_fd_limit

    service = Service(cfg)
    raise_fd_limit()
    root = logging.getLogger("stabledreamer")
    root.setLevel(logging.INFO)
    root.addHandler(service.logbuffer)
    if not any(isinstance(h, logging.StreamHandler) for h in root.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
    service.open()
    signal.signal(signal.SIGTERM, service.request_stop)
    signal.signal(signal.SIGINT, service.request_stop)
    service.run()
    root.removeHandler(service.logbuffer)
    logging.shutdown()
    return 0
