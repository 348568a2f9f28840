"""A small DEALER client: connect, handshake, submit, poll without blocking, fetch results.

Built for a host that must never block (Blender calls :meth:`Client.poll_events` from a
``bpy.app.timers`` callback) and also used by the tests and scripts through the blocking helpers
(:meth:`Client.handshake`, :meth:`Client.wait_for`, :meth:`Client.download`)::

    with Client(endpoint) as client:
        hello = client.handshake()
        job = client.submit("a ceramic teapot", preset=hello.default_preset)
        while True:
            for event in client.poll_events():  # never blocks
                ...  # Progress, Preview (latest per job), JobState, Error, ResultDownloaded

``poll_events`` also does the protocol's chores: it acknowledges previews (flow control), keeps
only the newest preview per job, and when a followed job's ``result`` manifest arrives it fetches
the files chunk by chunk, checks every chunk's and file's SHA-256 and finally yields one
:class:`ResultDownloaded` with the bytes.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import zmq

from . import codec
from .endpoints import DEFAULT_ENDPOINT
from .errors import ErrorCode, ProtocolError
from .limits import DEFAULT_LIMITS, Limits
from .messages import (
    EVENT,
    Attach,
    Cancel,
    Detach,
    Error,
    Fetch,
    Hello,
    JobState,
    ListJobs,
    Message,
    Ping,
    Preview,
    PreviewAck,
    Result,
    ResultChunk,
    Status,
    Submit,
    new_id,
)
from .version import PROTOCOL_MAJOR, __version__

log = logging.getLogger(__name__)


@dataclass
class ResultDownloaded:
    """Local event (never on the wire): every file of a job's result arrived and verified."""

    job: str
    files: dict[str, bytes]
    manifest: Result


@dataclass
class Download:
    """Reassembly of one job's result files from ``result_chunk`` replies."""

    job: str
    manifest: Result
    buffers: dict[str, bytearray] = field(default_factory=dict)
    missing: dict[str, set[int]] = field(default_factory=dict)
    queue: deque = field(default_factory=deque)  # (file, index) not yet requested
    in_flight: dict[str, tuple[str, int, float]] = field(default_factory=dict)  # id -> request
    error: ProtocolError | None = None
    done: bool = False

    def __post_init__(self) -> None:
        for f in self.manifest.files:
            self.buffers[f.name] = bytearray(f.size)
            n = f.chunks(self.manifest.chunk_size)
            self.missing[f.name] = set(range(n))
            self.queue.extend((f.name, i) for i in range(n))
            if n == 0 and hashlib.sha256(b"").hexdigest() != f.sha256:
                raise ProtocolError(ErrorCode.CHECKSUM, f"{f.name}: SHA-256 does not match")
        self.done = not any(self.missing.values())

    @property
    def bytes_total(self) -> int:
        return sum(f.size for f in self.manifest.files)

    @property
    def bytes_received(self) -> int:
        cs = self.manifest.chunk_size
        return self.bytes_total - sum(
            min(cs, f.size - i * cs) for f in self.manifest.files for i in self.missing[f.name]
        )

    @property
    def progress(self) -> float:
        return self.bytes_received / self.bytes_total if self.bytes_total else 1.0

    def accept(self, chunk: ResultChunk) -> None:
        """Verify a chunk and copy it into place (duplicates are ignored)."""
        try:
            info = self.manifest.file(chunk.file)
        except KeyError:
            raise ProtocolError(
                ErrorCode.BAD_FIELD, f"chunk of unknown file {chunk.file!r}"
            ) from None
        cs = self.manifest.chunk_size
        start = chunk.index * cs
        length = min(cs, info.size - start)
        if chunk.index not in self.missing[info.name]:
            if 0 <= chunk.index < info.chunks(cs):
                return  # duplicate (a retried request answered twice)
            raise ProtocolError(
                ErrorCode.BAD_FIELD, f"chunk {chunk.index} of {info.name} out of range"
            )
        data = chunk.data
        if chunk.offset != start or data.nbytes != length:
            raise ProtocolError(
                ErrorCode.BAD_FIELD, f"chunk {chunk.index} of {info.name}: wrong offset or length"
            )
        if hashlib.sha256(data).hexdigest() != chunk.sha256:
            raise ProtocolError(ErrorCode.CHECKSUM, f"chunk {chunk.index} of {info.name} corrupt")
        self.buffers[info.name][start : start + length] = memoryview(data)
        self.missing[info.name].discard(chunk.index)
        if not self.missing[info.name]:
            digest = hashlib.sha256(self.buffers[info.name]).hexdigest()
            if digest != info.sha256:
                raise ProtocolError(ErrorCode.CHECKSUM, f"{info.name}: SHA-256 does not match")
        self.done = not any(self.missing.values())


class Client:
    """DEALER client of one backend.

    ``keys``: a :class:`~stabledreamer_protocol.keys.KeyFiles` (or pass ``client_secret`` and
    ``server_public`` paths) turns on CURVE. ``hmac_key`` signs and checks every message.
    ``limits`` bound what this client accepts; what it sends is checked against the limits the
    backend announced in ``hello``.
    """

    def __init__(
        self,
        endpoint: str = DEFAULT_ENDPOINT,
        *,
        context: zmq.Context | None = None,
        keys=None,
        client_secret: str | os.PathLike | None = None,
        server_public: str | os.PathLike | None = None,
        hmac_key: bytes | None = None,
        limits: Limits = DEFAULT_LIMITS,
        software: str = f"stabledreamer-protocol {__version__}",
        auto_fetch: bool = True,
        fetch_window: int = 4,
        fetch_retry_s: float = 30.0,
    ) -> None:
        if keys is not None:
            client_secret = client_secret or keys.client_secret
            server_public = server_public or keys.server_public
        if (client_secret is None) != (server_public is None):
            raise ValueError("CURVE needs both client_secret and server_public")
        self.endpoint = endpoint
        self.context = context or zmq.Context.instance()
        self.client_secret, self.server_public = client_secret, server_public
        self.hmac_key = hmac_key
        self.limits = limits
        self.send_limits = limits
        self.software = software
        self.auto_fetch = auto_fetch
        self.fetch_window = max(1, fetch_window)
        self.fetch_retry_s = fetch_retry_s
        self.socket: zmq.Socket | None = None
        self.server: Hello | None = None
        self.jobs: dict[str, JobState] = {}
        """Latest known state of every job this client has heard of."""
        self.followed: set[str] = set()
        """Jobs submitted or attached by this client (their results are fetched)."""
        self.downloads: dict[str, Download] = {}
        self.bad_messages = 0
        """Messages from the backend that failed to decode (logged, then skipped)."""
        self.dropped_previews = 0
        self._backlog: list = []

    # --- connection ---------------------------------------------------------------------------

    def connect(self) -> Client:
        if self.socket is not None:
            return self
        sock = self.context.socket(zmq.DEALER)
        try:
            sock.setsockopt(zmq.LINGER, 0)  # never hang the host on exit
            sock.setsockopt(zmq.MAXMSGSIZE, self.limits.max_message_bytes)
            sock.setsockopt(zmq.IMMEDIATE, 1)  # queue nothing for a peer not yet connected
            if self.client_secret is not None:
                from .keys import apply_client_curve

                apply_client_curve(sock, self.client_secret, self.server_public)
            sock.connect(self.endpoint)
        except BaseException:
            sock.close(0)
            raise
        self.socket = sock
        return self

    def close(self) -> None:
        if self.socket is not None:
            self.socket.close(0)
            self.socket = None

    def __enter__(self) -> Client:
        return self.connect()

    def __exit__(self, *exc) -> None:
        self.close()

    # --- sending ------------------------------------------------------------------------------

    def send(self, msg: Message) -> str:
        """Encode (checked against the backend's limits) and send; returns the message id.
        Raises ``ProtocolError(timeout)`` when the backend's queue for us is full."""
        if self.socket is None:
            self.connect()
        frames = codec.encode(msg, key=self.hmac_key, limits=self.send_limits)
        try:
            self.socket.send_multipart(frames, zmq.NOBLOCK, copy=False)
        except zmq.Again:
            raise ProtocolError(
                ErrorCode.TIMEOUT, "backend not reachable or not reading (send would block)"
            ) from None
        return msg.id

    def handshake(self, timeout_s: float = 5.0) -> Hello:
        """Send ``hello`` and wait for the backend's (blocking, at most ``timeout_s``)."""
        # With IMMEDIATE, sends fail until the connection is up: retry until the deadline.
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                hello_id = self.start_handshake()
                break
            except ProtocolError:
                if time.monotonic() >= deadline:
                    raise ProtocolError(
                        ErrorCode.TIMEOUT, f"no connection to {self.endpoint}"
                    ) from None
                time.sleep(0.005)
        reply = self.wait_for(
            lambda m: isinstance(m, Hello | Error) and m.re == hello_id,
            max(0.0, deadline - time.monotonic()),
        )
        if reply is None:
            raise ProtocolError(
                ErrorCode.TIMEOUT, f"no hello from {self.endpoint} in {timeout_s} s"
            )
        return self.finish_handshake(reply)

    def start_handshake(self) -> str:
        """Send ``hello`` without waiting (for hosts that must not block); returns its id, which
        the backend's reply carries as ``re``. Raises ``ProtocolError(timeout)`` while there is
        no connection yet (try again later). Pass the reply to :meth:`finish_handshake`."""
        return self.send(Hello(software=self.software, features=["preview_ack", "fetch"]))

    def finish_handshake(self, reply: Hello | Error) -> Hello:
        """Check the backend's answer to :meth:`start_handshake` and adopt its limits."""
        if isinstance(reply, Error):
            raise reply.to_exception()
        if reply.protocol.split(".", 1)[0] != str(PROTOCOL_MAJOR):
            raise ProtocolError(
                ErrorCode.VERSION_MISMATCH,
                f"backend speaks protocol {reply.protocol}, this client {PROTOCOL_MAJOR}.x",
                "Install matching versions of the add-on and the backend.",
            )
        self.server = reply
        if reply.limits:
            self.send_limits = Limits.from_dict({**self.limits.to_dict(), **reply.limits})
        return reply

    def submit(self, prompt: str = "", *, job: str | None = None, **fields) -> str:
        """Send a ``submit``; returns the job id (a fresh one unless given). ``fields`` are
        :class:`Submit`'s (negative, preset, seed, overrides, preview_points, init_points...)."""
        msg = Submit(job=job or new_id(), prompt=prompt, **fields)
        self.send(msg)
        self.followed.add(msg.job)
        return msg.job

    def cancel(self, job: str) -> str:
        return self.send(Cancel(job=job))

    def status(self, job: str) -> str:
        return self.send(Status(job=job))

    def list_jobs(self, offset: int = 0, limit: int | None = None, active: bool = False) -> str:
        """One page of the backend's jobs (``jobs``; ask again with its ``next`` for more);
        ``active``: only those queued or running (since 1.3)."""
        return self.send(ListJobs(offset=offset, limit=limit, active=active))

    def attach(self, job: str, preview_points: int | None = None) -> str:
        self.followed.add(job)
        return self.send(Attach(job=job, preview_points=preview_points))

    def detach(self, job: str) -> str:
        self.followed.discard(job)
        return self.send(Detach(job=job))

    def ping(self) -> str:
        return self.send(Ping())

    def fetch_result(self, result: Result) -> None:
        """Start (or restart) downloading a result (done automatically for followed jobs when
        ``auto_fetch``); :meth:`poll_events` yields :class:`ResultDownloaded` at the end."""
        self._backlog.extend(self._start(result))

    def _start(self, result: Result) -> list:
        try:
            dl = Download(job=result.job, manifest=result)
        except ProtocolError as e:
            return [Error.from_exception(e, job=result.job, re=result.id)]
        if dl.done:  # nothing to fetch (no files, or only empty ones)
            files = {name: b"" for name in dl.buffers}
            return [ResultDownloaded(job=dl.job, files=files, manifest=result)]
        self.downloads[result.job] = dl
        self._pump(dl)
        return []

    # --- receiving ----------------------------------------------------------------------------

    def poll_events(self, max_messages: int = 1000) -> list:
        """Every event that has arrived, without blocking: decoded messages (only the newest
        ``preview`` per job) and :class:`ResultDownloaded` when a result is complete."""
        events = self._backlog + self._drain(max_messages)
        self._backlog = []
        return self._coalesce(events)

    def wait_for(self, predicate: Callable[[object], bool], timeout_s: float):
        """Block until an event matches (returned) or the timeout passes (None). Other events
        stay queued for the next :meth:`poll_events`."""
        deadline = time.monotonic() + timeout_s
        for i, event in enumerate(self._backlog):
            if predicate(event):
                return self._backlog.pop(i)
        while True:
            found = None
            for event in self._drain(1000):
                if found is None and predicate(event):
                    found = event
                else:
                    self._backlog.append(event)
            if found is not None:
                return found
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            self.socket.poll(max(1, int(remaining * 1000)), zmq.POLLIN)

    def download(self, job: str, timeout_s: float = 60.0) -> dict[str, bytes]:
        """Block until ``job``'s result is downloaded (it must be done or about to be)."""
        hit = self.wait_for(
            lambda e: (
                (isinstance(e, ResultDownloaded) and e.job == job)
                or (isinstance(e, Error) and e.job == job)
            ),
            timeout_s,
        )
        if hit is None:
            raise ProtocolError(
                ErrorCode.TIMEOUT, f"result of {job} not downloaded in {timeout_s} s"
            )
        if isinstance(hit, Error):
            raise hit.to_exception()
        return hit.files

    def _coalesce(self, events: list) -> list:
        latest: dict[str, int] = {}
        for i, e in enumerate(events):
            if isinstance(e, Preview):
                latest[e.job] = i
        out = [e for i, e in enumerate(events) if not isinstance(e, Preview) or latest[e.job] == i]
        self.dropped_previews += len(events) - len(out)
        return out

    def _drain(self, max_messages: int) -> list:
        if self.socket is None:
            return []
        events: list = []
        for _ in range(max_messages):
            try:
                frames = self.socket.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            try:
                msg = codec.decode(frames, limits=self.limits, key=self.hmac_key, direction=EVENT)
            except ProtocolError as e:
                self.bad_messages += 1
                log.warning("dropped a bad message from the backend: %s", e)
                continue
            events.extend(self._handle(msg))
        now = time.monotonic()
        for dl in list(self.downloads.values()):
            self._pump(dl, now)
        return events

    def _handle(self, msg: Message) -> list:
        if isinstance(msg, Preview):
            self._send_quietly(PreviewAck(job=msg.job, step=msg.step))
        elif isinstance(msg, JobState):
            self.jobs[msg.job] = msg
        elif isinstance(msg, Result):
            if self.auto_fetch and msg.job in self.followed:
                return [msg, *self._start(msg)]
        elif isinstance(msg, ResultChunk):
            return self._on_chunk(msg)
        elif isinstance(msg, Error):
            dl = self.downloads.get(msg.job) if msg.job else None
            if dl is not None and msg.re in dl.in_flight:
                dl.error = msg.to_exception()
                del self.downloads[msg.job]
        return [msg]

    def _on_chunk(self, chunk: ResultChunk) -> list:
        dl = self.downloads.get(chunk.job)
        if dl is None or chunk.re not in dl.in_flight:
            return []  # late answer to an abandoned download
        del dl.in_flight[chunk.re]
        try:
            dl.accept(chunk)
        except ProtocolError as e:
            dl.error = e
            del self.downloads[dl.job]
            return [Error.from_exception(e, job=dl.job, re=chunk.id)]
        if dl.done:
            del self.downloads[dl.job]
            files = {name: bytes(buf) for name, buf in dl.buffers.items()}
            return [ResultDownloaded(job=dl.job, files=files, manifest=dl.manifest)]
        self._pump(dl)
        return []

    def _pump(self, dl: Download, now: float | None = None) -> None:
        """Keep ``fetch_window`` chunk requests in flight; re-ask for lost ones."""
        now = time.monotonic() if now is None else now
        for mid, (name, index, sent) in list(dl.in_flight.items()):
            if now - sent > self.fetch_retry_s:
                del dl.in_flight[mid]
                dl.queue.appendleft((name, index))
        while dl.queue and len(dl.in_flight) < self.fetch_window:
            name, index = dl.queue.popleft()
            msg = Fetch(job=dl.job, file=name, index=index)
            if not self._send_quietly(msg):
                dl.queue.appendleft((name, index))
                break
            dl.in_flight[msg.id] = (name, index, now)

    def _send_quietly(self, msg: Message) -> bool:
        try:
            self.send(msg)
            return True
        except ProtocolError as e:
            log.warning("could not send %s: %s", msg.TYPE, e)
            return False


def as_array(data: bytes) -> np.ndarray:
    """Bytes as a read-only uint8 array (e.g. for a ``target_file`` buffer)."""
    return np.frombuffer(data, dtype=np.uint8)
