"""Delivery to the service's clients (``docs/protocol.md`` section 7).

Every client (a ROUTER identity, a :class:`Peer`) has a FIFO of must-deliver messages (replies,
``job_state``, ``result``, ``result_chunk``, ``error``, ``logs``), sent without blocking and kept
while the client's pipe is full. ``progress`` and ``debug_image`` keep only the newest undelivered
one per job; ``preview`` keeps at most ``PREVIEW_CREDIT`` unacknowledged frames in flight per
client and job and only the newest one waiting (latest frame wins). A client that has gone away
is forgotten at the first failed send; its jobs keep running and any client can ``attach`` to
them later.

:class:`Delivery` owns the peers and talks to the socket only through a ``send`` function, so it
can be tested without one.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from stabledreamer_protocol import (
    PREVIEW_CREDIT,
    Error,
    ErrorCode,
    Limits,
    Message,
    Preview,
    ProtocolError,
    encode,
)

from .pipe import PreviewFrame

log = logging.getLogger("stabledreamer.service")

MAX_OUTBOX = 20_000
"""Queued must-deliver messages per client before it is considered gone (it stopped reading)."""
MAX_OUTBOX_BYTES = 64 * 2**20
"""Bytes queued for one client beyond which large replies (result chunks) are refused with
``busy``: the protocol's ``max_message_bytes``, so one largest message always fits. The
reference client keeps 4 chunks of at most 4 MiB in flight, far below it."""
DROP_OUTBOX_BYTES = 2 * MAX_OUTBOX_BYTES
"""Bytes queued for one client beyond which it is considered gone (only small must-deliver
messages can take it there, after large ones were refused)."""
SOCKET_HWM = 16
"""Messages libzmq may queue per client (``SNDHWM``), so its own queue is bounded too: 16
chunks of at most 4 MiB; everything else waits in the byte-counted outbox."""
CLIENT_IDLE_S = 600.0
"""A client that has sent nothing for this long and follows no queued or running job is
forgotten (a new message from it starts afresh)."""


class PeerGone(Exception):
    """Raised by a ``send`` function: the client is no longer connected."""


Send = Callable[[bytes, list], bool]
"""``send(identity, frames)``: True when sent, False when the client's pipe is full (try later);
raises :class:`PeerGone` when the client is gone."""


@dataclass
class Peer:
    """What the service knows of one connected client."""

    identity: bytes
    owner: str = ""
    """The client's CURVE public key (Z85), "" without CURVE."""
    operator: bool = False
    """May see and manage every job (an operator key, or no CURVE: single-user)."""
    outbox: deque = field(default_factory=deque)  # encoded frames, must be delivered in order
    outbox_bytes: int = 0
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


class Delivery:
    """The clients, what each follows, and what is waiting to be sent to each."""

    def __init__(self, send: Send, limits: Limits, preview_points: int) -> None:
        self.send = send
        self.limits = limits
        self.preview_points = preview_points
        """Default and largest preview size, in Gaussians."""
        self.peers: dict[bytes, Peer] = {}

    # --- clients -------------------------------------------------------------------------------

    def peer(self, identity: bytes) -> Peer:
        """The client with this identity (a new one the first time), marked as seen now."""
        peer = self.peers.get(identity)
        if peer is None:
            peer = self.peers[identity] = Peer(identity)
        peer.last_seen = time.monotonic()
        return peer

    def forget(self, peer: Peer) -> None:
        self.peers.pop(peer.identity, None)

    def forget_idle(self, now: float, live: Callable[[str], bool]) -> None:
        """Forget clients idle for ``CLIENT_IDLE_S`` with nothing to send and no ``live`` job."""
        for p in list(self.peers.values()):
            if p.pending or now - p.last_seen <= CLIENT_IDLE_S:
                continue
            if not any(live(j) for j in p.following):
                self.forget(p)

    @property
    def pending(self) -> bool:
        return any(p.pending for p in self.peers.values())

    @property
    def outbox_waiting(self) -> bool:
        return any(p.outbox for p in self.peers.values())

    # --- following -----------------------------------------------------------------------------

    def follow(self, peer: Peer, job: str, preview_points: int | None) -> None:
        peer.following[job] = preview_points
        peer.credit.setdefault(job, PREVIEW_CREDIT)

    def unfollow(self, peer: Peer, job: str) -> None:
        peer.following.pop(job, None)
        for d in (peer.credit, peer.previews, peer.progress, peer.debug):
            d.pop(job, None)

    def unfollow_all(self, job: str) -> None:
        for p in self.peers.values():
            self.unfollow(p, job)

    def ack(self, peer: Peer, job: str) -> None:
        """A ``preview_ack``: one more preview of ``job`` may be in flight to ``peer``."""
        if job in peer.following:
            peer.credit[job] = min(PREVIEW_CREDIT, peer.credit.get(job, 0) + 1)

    def client_cap(self, wanted: int | None) -> int:
        if wanted is None:
            return self.preview_points
        return min(wanted, self.preview_points)

    def preview_cap(self, job: str) -> int:
        """The largest preview any follower of ``job`` wants (what the worker should send)."""
        peers = self.peers.values()
        caps = [self.client_cap(p.following[job]) for p in peers if job in p.following]
        return max(caps, default=self.preview_points)

    # --- sending -------------------------------------------------------------------------------

    def encode(self, msg: Message, check: bool = True) -> list | None:
        try:
            return encode(msg, check=check, limits=self.limits)
        except (ProtocolError, TypeError, ValueError) as e:  # a bug here, never the client's
            log.error("could not encode %s: %s", msg.TYPE, e)
            if isinstance(msg, Error):
                return None
            return self.encode(
                Error(re=msg.re, job=msg.job, code=ErrorCode.INTERNAL, message=str(e)[:4000])
            )

    def room(self, peer: Peer, nbytes: int) -> bool:
        """Whether ``nbytes`` more may be queued for ``peer`` (see ``MAX_OUTBOX_BYTES``)."""
        return peer.outbox_bytes + nbytes <= MAX_OUTBOX_BYTES

    def _queue(self, peer: Peer, frames: list) -> bool:
        """Append to the outbox; False when that made the client one to drop (and dropped)."""
        peer.outbox.append(frames)
        peer.outbox_bytes += _size(frames)
        if len(peer.outbox) > MAX_OUTBOX or peer.outbox_bytes > DROP_OUTBOX_BYTES:
            log.warning(
                "a client stopped reading (%d messages, %d bytes waiting); dropped",
                len(peer.outbox),
                peer.outbox_bytes,
            )
            self.forget(peer)
            return False
        return True

    def reply(self, peer: Peer, msg: Message) -> None:
        frames = self.encode(msg)
        if frames is not None and self._queue(peer, frames):
            self.flush(peer)

    def latest(self, peer: Peer, key: str, msg: Message) -> None:
        """Send ``msg`` to ``peer``, or keep it as the newest of ``key`` while the client's pipe
        is full (an older one waiting is replaced): progress that is not a job's. ``key`` must
        not be a job id (use a ``/``, which ids never hold)."""
        frames = self.encode(msg, check=False)
        if frames is not None:
            peer.progress[key] = frames
            self.flush(peer)

    def broadcast(self, job: str, msg: Message, kind: str = "must") -> None:
        """Send to every follower of ``job``: ``must`` (queued), or ``progress``/``debug``
        (only the newest one waits)."""
        followers = [p for p in self.peers.values() if job in p.following]
        if not followers:
            return
        frames = self.encode(msg, check=kind == "must")
        if frames is None:
            return
        for p in followers:
            if kind == "progress":
                p.progress[job] = frames
            elif kind == "debug":
                p.debug[job] = frames
            elif not self._queue(p, frames):
                continue
            self.flush(p)

    def broadcast_preview(self, job: str, frame: PreviewFrame) -> None:
        encoded: dict[int, list | None] = {}
        for p in list(self.peers.values()):
            if job not in p.following:
                continue
            cap = self.client_cap(p.following[job])
            if cap <= 0:
                continue
            if cap not in encoded:
                msg = Preview.from_gaussians(
                    job,
                    frame.means,
                    frame.log_scales,
                    frame.quats,
                    frame.rgb,
                    frame.opacities,
                    max_points=cap,
                    stage=frame.stage,
                    step=frame.step,
                    total_gaussians=frame.total_gaussians,
                )
                encoded[cap] = self.encode(msg, check=False)
            if encoded[cap] is not None:
                p.previews[job] = encoded[cap]  # latest frame wins
                self.flush(p)

    def flush_all(self) -> None:
        for p in list(self.peers.values()):
            if p.pending:
                self.flush(p)

    def _send(self, peer: Peer, frames: list) -> bool | None:
        """True: sent; False: the client's pipe is full (try later); None: the client is gone."""
        try:
            return self.send(peer.identity, frames)
        except PeerGone:
            self.forget(peer)
            return None

    def flush(self, peer: Peer) -> None:
        if peer.identity not in self.peers:
            return
        while peer.outbox:
            if not self._send(peer, peer.outbox[0]):
                return
            peer.outbox_bytes -= _size(peer.outbox.popleft())
        for store in (peer.progress, peer.debug):
            for job in list(store):
                if not self._send(peer, store[job]):
                    return
                del store[job]
        for job in list(peer.previews):
            if peer.credit.get(job, 0) <= 0:
                continue
            if not self._send(peer, peer.previews[job]):
                return
            del peer.previews[job]
            peer.credit[job] = peer.credit.get(job, PREVIEW_CREDIT) - 1


def _size(frames: list) -> int:
    return sum(len(f) if isinstance(f, bytes) else memoryview(f).nbytes for f in frames)
