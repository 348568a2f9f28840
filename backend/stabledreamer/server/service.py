"""The ROUTER loop: commands from any number of clients, a job queue, one worker process per
running job, events to every client that follows a job.

Delivery (``docs/protocol.md`` section 7): every client has a FIFO of must-deliver messages
(replies, ``job_state``, ``result``, ``result_chunk``, ``error``, ``logs``), sent without blocking
(``ROUTER_MANDATORY``, ``NOBLOCK``) and kept while the client's pipe is full. ``progress`` and
``debug_image`` keep only the newest undelivered one per job; ``preview`` keeps at most
``PREVIEW_CREDIT`` unacknowledged frames in flight per client and job and only the newest one
waiting (latest frame wins). A client that has gone away is forgotten at the first failed send;
its jobs keep running and any client can ``attach`` to them later.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import random
import signal
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from stabledreamer_protocol import (
    DEFAULT_LIMITS,
    PREVIEW_CREDIT,
    PROTOCOL_VERSION,
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
    JobInfo,
    Jobs,
    JobState,
    Limits,
    ListJobs,
    Logs,
    Message,
    Ping,
    Pong,
    Preview,
    PreviewAck,
    Progress,
    ProtocolError,
    Result,
    ResultChunk,
    ResultFile,
    Status,
    Submit,
    encode,
    recv_routed,
)

from .. import __version__
from ..presets import PRESETS, TEXT_PRESETS
from .jobs import DEFAULT_PRESET, INIT_FILE, ConfigError, JobRecord, JobStore, build_config
from .logbuffer import LogBuffer
from .worker import worker_main

log = logging.getLogger("stabledreamer.service")
wlog = logging.getLogger("stabledreamer.worker")

CANCEL_GRACE_S = 5.0
"""How long a cancelled job's worker may take to stop at its next step before it is killed."""
MAX_CRASHES = 2
"""A job whose worker process dies (not a reported failure) is resumed this many times."""
MAX_OUTBOX = 20_000
"""Queued must-deliver messages per client before it is considered gone (it stopped reading)."""
CLIENT_IDLE_S = 600.0
"""A client that has sent nothing for this long and follows no queued or running job is
forgotten (a new message from it starts afresh)."""
ACTIVE = ("queued", "running")
TEXT_DEFAULT_PRESET = "standard"


@dataclass
class ServiceConfig:
    bind: str
    state: Path
    curve: bool = True
    keys: Path | None = None
    limits: Limits = DEFAULT_LIMITS
    max_running: int = 1
    """Training jobs at once (one on the GPU by default)."""
    preview_points: int = 100_000
    """Default and largest preview size, in Gaussians."""
    preview_interval_s: float = 0.5
    stop_timeout_s: float = 60.0
    """On SIGTERM: how long a running job may take to checkpoint and exit before it is killed."""
    models: list[str] = field(default_factory=list)
    """Guidance models named on the command line, as "if:X" / "sd:Y" (text jobs use them)."""
    prewarm: bool = True
    """Keep one idle worker with torch imported, so a job starts at once."""


@dataclass
class Peer:
    """What the service knows of one connected client (a ROUTER identity)."""

    identity: bytes
    outbox: deque = field(default_factory=deque)  # encoded frames, must be delivered in order
    progress: dict[str, list] = field(default_factory=dict)  # job -> newest frames
    debug: dict[str, list] = field(default_factory=dict)
    previews: dict[str, list] = field(default_factory=dict)  # job -> newest waiting preview
    credit: dict[str, int] = field(default_factory=dict)
    following: dict[str, int | None] = field(default_factory=dict)  # job -> preview_points
    last_seen: float = field(default_factory=time.monotonic)

    @property
    def pending(self) -> bool:
        return bool(self.outbox or self.progress or self.debug) or any(
            self.credit.get(j, PREVIEW_CREDIT) > 0 for j in self.previews
        )


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


class Service:
    def __init__(self, cfg: ServiceConfig) -> None:
        self.cfg = cfg
        self.limits = cfg.limits
        self.store = JobStore(cfg.state)
        self.peers: dict[bytes, Peer] = {}
        self.workers: list[WorkerHandle] = []
        self.spare: WorkerHandle | None = None
        self.device = "cpu"
        self.stopping = False
        self.pending_delete: set[str] = set()
        self.logbuffer = LogBuffer()
        self._mp = mp.get_context("spawn")
        self._last_housekeeping = 0.0
        self._progress_dirty: set[str] = set()
        self.bad_messages = 0
        self._bad_logged = 0
        self._spare_retry_at = 0.0
        self.context: zmq.Context | None = None
        self.socket: zmq.Socket | None = None
        self.auth = None

    # --- life cycle ---------------------------------------------------------------------------

    def open(self) -> None:
        from .security import check_bind, enable_curve

        check_bind(self.cfg.bind, self.cfg.curve)
        self.context = zmq.Context()
        sock = self.context.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        sock.setsockopt(zmq.MAXMSGSIZE, self.limits.max_message_bytes)
        sock.setsockopt(zmq.SNDHWM, 1000)
        sock.setsockopt(zmq.RCVHWM, 1000)
        try:
            if self.cfg.curve:
                self.auth, files = enable_curve(self.context, sock, self.cfg.keys)
                log.info("CURVE on: admitting the client keys in %s", files.authorized)
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
        for w in list(self.workers):
            self._kill(w)
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
        for w in self.workers:
            poller.register(w.conn.fileno(), zmq.POLLIN)
        if timeout_ms is None:
            timeout_ms = 20 if any(p.pending for p in self.peers.values()) else 200
        ready = dict(poller.poll(timeout_ms))
        if self.socket in ready:
            self._read_clients()
        for w in list(self.workers):
            self._read_worker(w)
        self._reap_workers()
        self._schedule()
        self._flush_all()
        now = time.monotonic()
        if now - self._last_housekeeping > 1.0:
            self._last_housekeeping = now
            self._housekeeping(now)

    def shutdown(self) -> None:
        """Stop the running job at its next step (it checkpoints; it resumes on restart)."""
        log.info("shutting down")
        if self.spare is not None:
            self._kill(self.spare)
        for w in list(self.workers):
            if w.cancelled:  # its job is over: no checkpoint to wait for
                self._kill(w)
            elif w.job is not None and not w.finished:
                w.stopping = True
                self._tell(w, ("stop",))
        deadline = time.monotonic() + self.cfg.stop_timeout_s
        while any(w.job is not None for w in self.workers) and time.monotonic() < deadline:
            self.step(timeout_ms=50)
        for w in list(self.workers):
            if w.job is not None:
                log.warning("job %s did not stop in time; killed", w.job)
            self._kill(w)
        end = time.monotonic() + 1.0  # last job_state messages
        while any(p.outbox for p in self.peers.values()) and time.monotonic() < end:
            self._flush_all()
            time.sleep(0.01)
        log.info("stopped")

    # --- workers ------------------------------------------------------------------------------

    def _spawn(self) -> WorkerHandle:
        parent, child = self._mp.Pipe(duplex=True)
        proc = self._mp.Process(
            target=worker_main, args=(child, os.getpid()), name="stabledreamer-worker"
        )
        proc.daemon = True
        proc.start()
        child.close()
        w = WorkerHandle(proc, parent)
        self.workers.append(w)
        return w

    def _kill(self, w: WorkerHandle) -> None:
        if w.process.is_alive():
            w.process.kill()
        w.process.join(5)
        w.conn.close()
        if w in self.workers:
            self.workers.remove(w)
        if self.spare is w:
            self.spare = None

    def _cancel_worker(self, w: WorkerHandle) -> None:
        w.cancelled = True
        w.kill_at = time.monotonic() + CANCEL_GRACE_S
        self._tell(w, ("cancel",))

    def _tell(self, w: WorkerHandle, msg: tuple) -> None:
        try:
            w.conn.send(msg)
        except (OSError, ValueError):
            pass  # it is dying; _reap_workers deals with it

    def _read_worker(self, w: WorkerHandle) -> None:
        try:
            for _ in range(200):
                if w.conn.closed or not w.conn.poll():
                    return
                self._on_worker(w, w.conn.recv())
        except (EOFError, OSError):
            w.conn.close()

    def _reap_workers(self) -> None:
        now = time.monotonic()
        for w in list(self.workers):
            if w.kill_at is not None and now > w.kill_at and w.process.is_alive():
                log.info("job %s: the cancelled worker did not stop in time; killed", w.job)
                w.process.kill()
                w.process.join(5)
            if w.process.is_alive() and not w.conn.closed:
                continue
            self._read_worker(w)  # anything it said last
            w.process.join(1)
            code = w.process.exitcode
            if w.process.is_alive():  # pipe closed but still running: end it
                w.process.kill()
                w.process.join(5)
            w.conn.close()
            self.workers.remove(w)
            if self.spare is w:
                self.spare = None
            job = w.job
            if job is None:
                if not w.ready and not self.stopping:
                    log.error("a worker process died while starting (exit code %s)", code)
                    self._spare_retry_at = time.monotonic() + 30.0
                continue
            rec = self.store.get(job)
            if job in self.pending_delete:
                self.pending_delete.discard(job)
                if rec is None:
                    self.store.remove_files(job)
                continue
            if rec is not None and rec.state == "running" and not w.finished:
                if w.stopping:
                    self._set_state(rec, "queued", "interrupted by a shutdown; resumes on restart")
                elif rec.crashes < MAX_CRASHES:
                    rec.crashes += 1
                    log.warning("job %s: worker died (exit code %s); resuming", job, code)
                    self._set_state(
                        rec,
                        "queued",
                        f"the worker process ended unexpectedly (exit code {code}); "
                        "resuming from the last checkpoint",
                    )
                else:
                    self._fail(
                        rec,
                        "job_failed",
                        f"the worker process ended unexpectedly (exit code {code}), "
                        f"{rec.crashes + 1} times; the job is given up",
                    )

    def _schedule(self) -> None:
        if self.stopping:
            return
        running = [w for w in self.workers if w.job is not None]
        queued = self.store.queued()
        while queued and len(running) < self.cfg.max_running:
            rec = queued.pop(0)
            w = self.spare or self._spawn()
            self.spare = None
            w.job = rec.job
            spec = {
                "job": rec.job,
                "job_dir": str(self.store.dir(rec.job)),
                "run_dir": str(self.store.run_dir(rec.job)),
                "kind": rec.kind,
                "preset": rec.preset,
                "overrides": rec.overrides,
                "seed": rec.seed,
                "prompt": rec.prompt,
                "negative": rec.negative,
                "models": self._model_ids(),
                "target_file": rec.target_file,
                "init_file": rec.init_file,
                "preview_points": self._preview_cap(rec.job),
                "preview_interval_s": self.cfg.preview_interval_s,
            }
            self._tell(w, ("run", spec))
            rec.starts += 1
            rec.error_code = ""
            self._set_state(rec, "running", "")
            log.info("job %s started", rec.job, extra={"job": rec.job})
            running.append(w)
            for other in queued:  # everyone behind moved up one place
                self._broadcast(other.job, self._job_state(other))
        idle = not running and not queued
        if self.cfg.prewarm and self.spare is None and idle:
            if time.monotonic() >= self._spare_retry_at:
                self.spare = self._spawn()

    def _worker_of(self, job: str) -> WorkerHandle | None:
        for w in self.workers:
            if w.job == job:
                return w
        return None

    def _on_worker(self, w: WorkerHandle, msg: tuple) -> None:
        kind = msg[0]
        if kind == "ready":
            w.ready = True
            self.device = msg[1].get("device", self.device)
            return
        job = w.job
        rec = self.store.get(job) if job is not None else None
        if kind == "log":
            wlog.log(msg[1], "job %s: %s", job, msg[2], extra={"job": job})
            return
        if rec is None or rec.state != "running" or w.cancelled:
            if kind in ("done", "failed", "cancelled", "stopped"):
                w.finished = True
            return  # cancelled or deleted meanwhile: the rest is of no interest
        if kind == "started":
            if msg[1].get("resumed"):
                log.info("job %s resumed from its checkpoint", job, extra={"job": job})
        elif kind == "progress":
            p = msg[1]
            stage_changed = p["stage"] != rec.stage
            rec.stage, rec.step, rec.total = p["stage"], p["step"], p["total"]
            self._progress_dirty.add(rec.job)
            if stage_changed:
                self._broadcast(job, self._job_state(rec))
            event = Progress(job=job, **p)
            self._broadcast(job, event, kind="progress")
        elif kind == "preview":
            self._broadcast_preview(job, msg[1])
        elif kind == "debug":
            d = msg[1]
            event = DebugImage(job=job, **d)
            self._broadcast(job, event, kind="debug")
        elif kind == "done":
            w.finished = True
            metrics, manifest = msg[1], msg[2]
            rec.result = {**manifest, "metrics": _json_safe(metrics)}
            self._set_state(rec, "done", "")
            log.info("job %s done: %s", job, _summary(metrics), extra={"job": job})
            self._broadcast(job, self._result(rec))
        elif kind == "failed":
            w.finished = True
            self._fail(rec, msg[1], msg[2])
        elif kind == "cancelled":
            w.finished = True
            self._set_state(rec, "cancelled", "cancelled")
        elif kind == "stopped":
            w.finished = True
            self._set_state(rec, "queued", "interrupted by a shutdown; resumes on restart")

    def _fail(self, rec: JobRecord, code: str, message: str) -> None:
        rec.error_code = code
        log.warning("job %s failed: [%s] %s", rec.job, code, message, extra={"job": rec.job})
        self._broadcast(rec.job, Error(job=rec.job, code=code, message=message[:4000]))
        self._set_state(rec, "failed", message)

    def _set_state(self, rec: JobRecord, state: str, message: str) -> None:
        rec.state, rec.message = state, message[:4000]
        self.store.save(rec)
        self._progress_dirty.discard(rec.job)
        self._broadcast(rec.job, self._job_state(rec))

    # --- messages -----------------------------------------------------------------------------

    def _job_state(self, rec: JobRecord, re: str | None = None) -> JobState:
        return JobState(
            job=rec.job,
            re=re,
            state=rec.state,
            stage=rec.stage,
            step=rec.step,
            total=rec.total,
            queue_position=self.store.queue_position(rec.job) if rec.state == "queued" else None,
            seed=rec.seed,
            message=rec.message,
        )

    def _result(self, rec: JobRecord) -> Result:
        r = rec.result or {}
        return Result(
            job=rec.job,
            files=[ResultFile(**f) for f in r.get("files", [])],
            chunk_size=r.get("chunk_size", 1 << 20),
            metrics=r.get("metrics", {}),
        )

    def _read_clients(self) -> None:
        for _ in range(500):  # then let workers and flushing have a turn
            try:
                identity, msg = recv_routed(
                    self.socket, limits=self.limits, direction="command", flags=zmq.NOBLOCK
                )
            except zmq.Again:
                return
            peer = self.peers.get(identity)
            if peer is None:
                peer = self.peers[identity] = Peer(identity)
            peer.last_seen = time.monotonic()
            if isinstance(msg, ProtocolError):
                self.bad_messages += 1
                log.debug("bad message: %s", msg)
                self._reply(peer, Error.from_exception(msg))
                continue
            try:
                self._dispatch(peer, msg)
            except ProtocolError as e:
                self._reply(peer, Error.from_exception(e, re=msg.id, job=msg.job))
            except Exception as e:  # a bug must not take the service down
                log.exception("internal error handling %s", msg.TYPE)
                self._reply(
                    peer,
                    Error(
                        re=msg.id,
                        job=msg.job,
                        code=ErrorCode.INTERNAL,
                        message=f"{type(e).__name__}: {e}"[:4000],
                    ),
                )

    def _dispatch(self, peer: Peer, msg: Message) -> None:
        handler = {
            Hello: self._on_hello,
            Ping: lambda p, m: self._reply(p, Pong(re=m.id)),
            Submit: self._on_submit,
            Cancel: self._on_cancel,
            Status: self._on_status,
            ListJobs: lambda p, m: self._reply(p, self._jobs(m.id)),
            Attach: self._on_attach,
            Detach: self._on_detach,
            PreviewAck: self._on_preview_ack,
            Fetch: self._on_fetch,
            Delete: self._on_delete,
            GetLogs: self._on_get_logs,
        }.get(type(msg))
        if handler is None:
            raise ProtocolError(ErrorCode.UNEXPECTED_TYPE, f"{msg.TYPE!r} is not a command")
        handler(peer, msg)

    def _on_hello(self, peer: Peer, msg: Hello) -> None:
        features = ["reconstruct", "demo", "preview_ack", "fetch", "delete", "logs", "init_points"]
        if self.cfg.curve:
            features.append("curve")
        self._reply(
            peer,
            Hello(
                re=msg.id,
                protocol=PROTOCOL_VERSION,
                software=f"stabledreamer {__version__}",
                device=self.device,
                models=["oracle", *self.cfg.models],
                presets=sorted(PRESETS),
                default_preset=DEFAULT_PRESET,
                features=features,
                limits=self.limits.to_dict(),
                queue_length=self.store.active_count(),
            ),
        )

    def _known(self, msg: Message) -> JobRecord:
        rec = self.store.get(msg.job)
        if rec is None:
            raise ProtocolError(ErrorCode.UNKNOWN_JOB, f"no job {msg.job!r} on this backend")
        return rec

    def _follow(self, peer: Peer, job: str, preview_points: int | None) -> None:
        peer.following[job] = preview_points
        peer.credit.setdefault(job, PREVIEW_CREDIT)
        w = self._worker_of(job)
        if w is not None:
            self._tell(w, ("preview_points", self._preview_cap(job)))

    def _unfollow(self, peer: Peer, job: str) -> None:
        peer.following.pop(job, None)
        for d in (peer.credit, peer.previews, peer.progress, peer.debug):
            d.pop(job, None)

    def _model_ids(self) -> dict[str, str]:
        """{"if": ..., "sd": ...} from ``serve --if-model/--sd-model`` (listed as "if:X")."""
        return dict(m.split(":", 1) for m in self.cfg.models if ":" in m)

    def _on_submit(self, peer: Peer, msg: Submit) -> None:
        digest = msg.digest()
        rec = self.store.get(msg.job)
        if rec is not None or msg.job in self.pending_delete:
            if rec is None or rec.digest != digest:
                raise ProtocolError(
                    ErrorCode.JOB_CONFLICT,
                    f"job {msg.job!r} exists with a different request",
                )
            self._follow(peer, rec.job, msg.preview_points)
            self._reply(peer, self._job_state(rec, re=msg.id))
            if rec.state == "done":
                self._reply(peer, self._result(rec))
            return
        if msg.target_format is None and not msg.prompt.strip():
            raise ProtocolError(
                ErrorCode.BAD_FIELD,
                "the prompt is empty",
                'Say what to make, e.g. "a ceramic teapot", or send a reconstruction target.',
            )
        if msg.target_format == "stl":
            raise ProtocolError(
                ErrorCode.UNSUPPORTED,
                "STL files carry no colours to reconstruct",
                "Export the mesh as .glb, .ply or .obj with colours (or send vertex arrays).",
            )
        if msg.init_points is not None and msg.target_format is not None:
            raise ProtocolError(
                ErrorCode.UNSUPPORTED,
                "init_points are not used by reconstructions",
                "Submit again without init_points (they start text jobs from a blockout).",
            )
        if msg.init_points is not None and not (
            len(msg.init_points) > 0 and np.isfinite(msg.init_points).all()
        ):
            raise ProtocolError(
                ErrorCode.BAD_FIELD,
                "init_points must be a non-empty array of finite coordinates",
                "Sample points from a mesh with a surface, inside the unit ball.",
            )
        if self.store.active_count() >= self.limits.max_queue:
            raise ProtocolError(
                ErrorCode.QUEUE_FULL,
                f"{self.limits.max_queue} jobs are already queued or running",
            )
        kind = {None: "generate", "demo": "demo"}.get(msg.target_format, "reconstruct")
        preset = msg.preset or (TEXT_DEFAULT_PRESET if kind == "generate" else DEFAULT_PRESET)
        if (kind == "generate") != (preset in TEXT_PRESETS):
            want = TEXT_PRESETS if kind == "generate" else "reconstruct or smoke"
            raise ProtocolError(
                ErrorCode.UNKNOWN_PRESET,
                f"preset {preset!r} does not fit a {kind} job; use {want}",
            )
        seed = msg.seed if msg.seed is not None else random.randrange(2**31)
        files: dict[str, bytes] = {}
        target_file = ""
        if msg.target_format == "arrays":
            target_file = "target.npz"
            files[target_file] = _npz(msg)
        elif kind == "reconstruct":
            target_file = f"target.{msg.target_format}"
            files[target_file] = msg.target_file.tobytes()
        init_file = ""
        if msg.init_points is not None:
            init_file = INIT_FILE
            files[init_file] = _init_npz(msg)
        try:  # validate preset and overrides now, so the submitter gets a clear reply
            build_config(preset, msg.overrides, seed, "validate", msg.prompt, msg.negative)
        except ConfigError as e:
            raise ProtocolError(e.code, str(e)) from None
        rec = JobRecord(
            job=msg.job,
            seq=self.store.next_seq(),
            digest=digest,
            kind=kind,
            preset=preset,
            seed=seed,
            overrides=msg.overrides,
            prompt=msg.prompt if kind == "generate" else "",
            negative=msg.negative if kind == "generate" else "",
            target_name=msg.target_name
            or {"demo": "demo", "generate": msg.prompt[:80]}.get(kind, msg.target_format),
            target_file=target_file,
            init_file=init_file,
            preview_points=msg.preview_points,
        )
        self.store.create(rec, files)
        log.info(
            "job %s queued: %s of %s, preset %s, seed %d",
            rec.job,
            kind,
            rec.target_name,
            preset,
            seed,
            extra={"job": rec.job},
        )
        self._follow(peer, rec.job, msg.preview_points)
        self._reply(peer, self._job_state(rec, re=msg.id))

    def _on_cancel(self, peer: Peer, msg: Cancel) -> None:
        rec = self._known(msg)
        if rec.state in ("queued", "running"):
            w = self._worker_of(rec.job)
            if w is not None:
                self._cancel_worker(w)
            log.info("job %s cancelled", rec.job, extra={"job": rec.job})
            self._set_state(rec, "cancelled", "cancelled")
        self._reply(peer, self._job_state(rec, re=msg.id))

    def _on_status(self, peer: Peer, msg: Status) -> None:
        self._reply(peer, self._job_state(self._known(msg), re=msg.id))

    def _on_attach(self, peer: Peer, msg: Attach) -> None:
        rec = self._known(msg)
        self._follow(peer, rec.job, msg.preview_points)
        self._reply(peer, self._job_state(rec, re=msg.id))
        if rec.state == "done":
            self._reply(peer, self._result(rec))

    def _on_detach(self, peer: Peer, msg: Detach) -> None:
        rec = self._known(msg)
        self._unfollow(peer, rec.job)
        self._reply(peer, self._job_state(rec, re=msg.id))

    def _on_preview_ack(self, peer: Peer, msg: PreviewAck) -> None:
        if msg.job in peer.following:
            peer.credit[msg.job] = min(PREVIEW_CREDIT, peer.credit.get(msg.job, 0) + 1)

    def _on_fetch(self, peer: Peer, msg: Fetch) -> None:
        rec = self._known(msg)
        if rec.state != "done" or rec.result is None:
            raise ProtocolError(ErrorCode.NOT_READY, f"job {rec.job} is {rec.state}, not done")
        result = self._result(rec)
        try:
            info = result.file(msg.file)
        except KeyError:
            raise ProtocolError(
                ErrorCode.BAD_FIELD, f"job {rec.job} has no result file {msg.file!r}"
            ) from None
        cs = result.chunk_size
        if msg.index >= max(info.chunks(cs), 1) or (info.size == 0):
            raise ProtocolError(
                ErrorCode.BAD_FIELD,
                f"{msg.file} has {info.chunks(cs)} chunks; there is no chunk {msg.index}",
            )
        offset = msg.index * cs
        with open(self.store.run_dir(rec.job) / info.name, "rb") as f:
            f.seek(offset)
            data = f.read(min(cs, info.size - offset))
        import hashlib

        self._reply(
            peer,
            ResultChunk(
                re=msg.id,
                job=rec.job,
                file=info.name,
                index=msg.index,
                offset=offset,
                sha256=hashlib.sha256(data).hexdigest(),
                data=np.frombuffer(data, dtype=np.uint8),
            ),
        )

    def _on_delete(self, peer: Peer, msg: Delete) -> None:
        rec = self._known(msg)
        w = self._worker_of(rec.job)
        if w is not None and not w.finished:
            self._cancel_worker(w)
            self.pending_delete.add(rec.job)  # its files go when the worker has exited
            self.store.records.pop(rec.job, None)
            (self.store.dir(rec.job) / "job.json").unlink(missing_ok=True)
        else:
            self.store.delete(rec.job)
        for p in self.peers.values():
            self._unfollow(p, rec.job)
        log.info("job %s deleted", rec.job, extra={"job": rec.job})
        self._reply(peer, self._jobs(msg.id))

    def _on_get_logs(self, peer: Peer, msg: GetLogs) -> None:
        budget = max(1024, self.limits.max_header_bytes - 4096)
        lines, cursor = self.logbuffer.since(msg.since, msg.max_lines, msg.job, budget)
        self._reply(peer, Logs(re=msg.id, job=msg.job, lines=lines, cursor=cursor))

    def _jobs(self, re: str | None) -> Jobs:
        recs = list(self.store.records.values())[-self.limits.max_jobs_listed :]
        return Jobs(
            re=re,
            jobs=[
                JobInfo(
                    job=r.job,
                    state=r.state,
                    stage=r.stage,
                    step=r.step,
                    total=r.total,
                    prompt=(r.prompt if r.kind == "generate" else f"[{r.kind}] {r.target_name}")[
                        :2000
                    ],
                    created=r.created,
                )
                for r in recs
            ],
        )

    # --- delivery -----------------------------------------------------------------------------

    def _encode(self, msg: Message, check: bool = True) -> list | None:
        try:
            return encode(msg, check=check, limits=self.limits)
        except (ProtocolError, TypeError, ValueError) as e:  # a bug here, never the client's
            log.error("could not encode %s: %s", msg.TYPE, e)
            if isinstance(msg, Error):
                return None
            return self._encode(
                Error(re=msg.re, job=msg.job, code=ErrorCode.INTERNAL, message=str(e)[:4000])
            )

    def _reply(self, peer: Peer, msg: Message) -> None:
        frames = self._encode(msg)
        if frames is not None:
            peer.outbox.append(frames)
            if len(peer.outbox) > MAX_OUTBOX:
                log.warning("a client stopped reading (%d messages waiting); dropped", MAX_OUTBOX)
                self._forget(peer)
                return
            self._flush(peer)

    def _broadcast(self, job: str, msg: Message, kind: str = "must") -> None:
        followers = [p for p in self.peers.values() if job in p.following]
        if not followers:
            return
        frames = self._encode(msg, check=kind == "must")
        if frames is None:
            return
        for p in followers:
            if kind == "progress":
                p.progress[job] = frames
            elif kind == "debug":
                p.debug[job] = frames
            else:
                p.outbox.append(frames)
            self._flush(p)

    def _broadcast_preview(self, job: str, data: dict[str, Any]) -> None:
        encoded: dict[int, list] = {}
        for p in list(self.peers.values()):
            if job not in p.following:
                continue
            cap = self._client_cap(p.following[job])
            if cap <= 0:
                continue
            if cap not in encoded:
                msg = Preview.from_gaussians(
                    job,
                    data["means"],
                    data["log_scales"],
                    data["quats"],
                    data["rgb"],
                    data["opacities"],
                    max_points=cap,
                    stage=data["stage"],
                    step=data["step"],
                    total_gaussians=data["total_gaussians"],
                )
                encoded[cap] = self._encode(msg, check=False)
            p.previews[job] = encoded[cap]  # latest frame wins
            self._flush(p)

    def _client_cap(self, wanted: int | None) -> int:
        if wanted is None:
            return self.cfg.preview_points
        return min(wanted, self.cfg.preview_points)

    def _preview_cap(self, job: str) -> int:
        peers = self.peers.values()
        caps = [self._client_cap(p.following[job]) for p in peers if job in p.following]
        return max(caps, default=self.cfg.preview_points)

    def _flush_all(self) -> None:
        for p in list(self.peers.values()):
            if p.pending:
                self._flush(p)

    def _send(self, peer: Peer, frames: list) -> bool | None:
        """True: sent; False: the client's pipe is full (try later); None: the client is gone."""
        try:
            self.socket.send_multipart([peer.identity, *frames], zmq.NOBLOCK, copy=False)
            return True
        except zmq.Again:
            return False
        except zmq.ZMQError as e:
            if e.errno == zmq.EHOSTUNREACH:
                self._forget(peer)
                return None
            raise

    def _flush(self, peer: Peer) -> None:
        if peer.identity not in self.peers:
            return
        while peer.outbox:
            ok = self._send(peer, peer.outbox[0])
            if not ok:
                return
            peer.outbox.popleft()
        for store in (peer.progress, peer.debug):
            for job in list(store):
                ok = self._send(peer, store[job])
                if not ok:
                    return
                del store[job]
        for job in list(peer.previews):
            if peer.credit.get(job, 0) <= 0:
                continue
            ok = self._send(peer, peer.previews[job])
            if not ok:
                return
            del peer.previews[job]
            peer.credit[job] = peer.credit.get(job, PREVIEW_CREDIT) - 1

    def _forget(self, peer: Peer) -> None:
        self.peers.pop(peer.identity, None)

    # --- housekeeping ---------------------------------------------------------------------------

    def _housekeeping(self, now: float) -> None:
        if self.bad_messages != self._bad_logged:
            log.info("%d malformed messages refused so far", self.bad_messages)
            self._bad_logged = self.bad_messages
        for job in list(self._progress_dirty):  # progress reaches the record at most once a second
            rec = self.store.get(job)
            if rec is not None:
                self.store.save(rec)
        self._progress_dirty.clear()
        for p in list(self.peers.values()):
            if p.pending or now - p.last_seen <= CLIENT_IDLE_S:
                continue
            live = [j for j in p.following if (r := self.store.get(j)) and r.state in ACTIVE]
            if not live:  # nothing more will be sent to it unless it asks again
                self._forget(p)


def _npz(msg: Submit) -> bytes:
    import io

    arrays = {"vertices": msg.target_vertices, "faces": msg.target_faces}
    if msg.target_colors is not None:
        arrays["colors"] = msg.target_colors
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _init_npz(msg: Submit) -> bytes:
    import io

    arrays = {"points": msg.init_points}
    if msg.init_colors is not None:
        arrays["colors"] = np.clip(np.nan_to_num(msg.init_colors), 0.0, 1.0)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def _summary(metrics: dict[str, Any]) -> str:
    psnr = metrics.get("psnr_heldout")
    text = f"{metrics.get('gaussians', '?')} Gaussians"
    if isinstance(psnr, int | float):
        text = f"PSNR {psnr:.2f} dB, " + text
    return text


def serve(cfg: ServiceConfig) -> int:
    """Run the service in this process until SIGTERM or SIGINT."""
    service = Service(cfg)
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
