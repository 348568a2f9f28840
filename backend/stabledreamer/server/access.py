"""Who may see and manage a job (``docs/protocol.md``, ownership).

A job belongs to the CURVE key that submitted it. Operator keys (``KEYS/operators/*.key``) may
see and manage every job. Without CURVE (loopback, ``--no-curve``) the service is single-user:
every client is an operator. A job from before ownership (no owner) is the operators' only.
"""

from __future__ import annotations

from collections.abc import Callable

import zmq

from stabledreamer_protocol import ErrorCode, Message, ProtocolError

from .delivery import Peer
from .jobs import JobRecord, JobStore


class Access:
    def __init__(self, curve: bool) -> None:
        self.curve = curve
        self.operators: set[str] = set()
        """CURVE public keys (Z85) that may see and manage every job."""

    def identify(self, peer: Peer, frame) -> None:
        """Set ``peer``'s key and role from a frame it sent (the ZAP handler's User-Id)."""
        peer.owner = user_id(frame) if frame is not None else ""
        peer.operator = not self.curve or peer.owner in self.operators

    def may(self, peer: Peer, rec: JobRecord) -> bool:
        return peer.operator or (rec.owner != "" and rec.owner == peer.owner)

    def forbidden(self, job: str) -> ProtocolError:
        return ProtocolError(ErrorCode.FORBIDDEN, f"job {job!r} belongs to another client key")

    def known(self, store: JobStore, peer: Peer, msg: Message) -> JobRecord:
        """The job ``msg`` names, when ``peer`` may see it."""
        rec = store.get(msg.job)
        if rec is None:
            raise ProtocolError(ErrorCode.UNKNOWN_JOB, f"no job {msg.job!r} on this backend")
        if not self.may(peer, rec):
            raise self.forbidden(msg.job)
        return rec

    def log_filter(self, store: JobStore, peer: Peer) -> Callable[[str | None], bool] | None:
        """None for an operator (every line); else only the lines of ``peer``'s jobs."""
        if peer.operator:
            return None
        return lambda job: (
            job is not None and (r := store.get(job)) is not None and self.may(peer, r)
        )


def user_id(frame) -> str:
    """The ZAP User-Id of a received frame: the client's CURVE public key (Z85), or ""."""
    try:
        return frame.get("User-Id") or ""
    except (zmq.ZMQError, AttributeError):
        return ""
