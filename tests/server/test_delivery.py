"""``Delivery`` without a socket: a fake ``send`` that can be full or gone."""

from __future__ import annotations

import numpy as np
import pytest

from stabledreamer.server.delivery import MAX_OUTBOX, Delivery, PeerGone
from stabledreamer.server.pipe import PreviewFrame
from stabledreamer_protocol import (
    DEFAULT_LIMITS,
    PREVIEW_CREDIT,
    JobState,
    Pong,
    Progress,
    codec,
)


class FakeSocket:
    def __init__(self) -> None:
        self.sent: list[tuple[bytes, list]] = []
        self.full: set[bytes] = set()
        self.gone: set[bytes] = set()

    def __call__(self, identity: bytes, frames: list) -> bool:
        if identity in self.gone:
            raise PeerGone
        if identity in self.full:
            return False
        self.sent.append((identity, frames))
        return True

    def types(self, identity: bytes) -> list[str]:
        return [codec.decode([bytes(f) for f in fr]).TYPE for i, fr in self.sent if i == identity]


def frame(n: int = 10, step: int = 0) -> PreviewFrame:
    rng = np.random.default_rng(step)
    return PreviewFrame(
        stage="s",
        step=step,
        total_gaussians=n,
        means=rng.normal(size=(n, 3)).astype(np.float32),
        log_scales=np.full((n, 3), -3, np.float32),
        quats=np.tile(np.float32([1, 0, 0, 0]), (n, 1)),
        rgb=np.full((n, 3), 0.5, np.float32),
        opacities=np.full(n, 0.9, np.float32),
    )


@pytest.fixture
def sock():
    return FakeSocket()


def test_replies_wait_in_order_while_the_pipe_is_full(sock):
    d = Delivery(sock, DEFAULT_LIMITS, 100)
    p = d.peer(b"a")
    sock.full.add(b"a")
    for i in range(3):
        d.reply(p, Pong(re=f"r{i}"))
    assert sock.sent == [] and len(p.outbox) == 3 and d.pending
    sock.full.clear()
    d.flush_all()
    got = [codec.decode([bytes(f) for f in fr]).re for _, fr in sock.sent]
    assert got == ["r0", "r1", "r2"] and not d.pending


def test_progress_keeps_only_the_newest(sock):
    d = Delivery(sock, DEFAULT_LIMITS, 100)
    p = d.peer(b"a")
    d.follow(p, "j", None)
    sock.full.add(b"a")
    for step in range(5):
        d.broadcast("j", Progress(job="j", stage="s", step=step, total=5), kind="progress")
    sock.full.clear()
    d.flush(p)
    steps = [codec.decode([bytes(f) for f in fr]).step for _, fr in sock.sent]
    assert steps == [4]


def test_preview_credit_and_latest_frame_wins(sock):
    d = Delivery(sock, DEFAULT_LIMITS, 100)
    p = d.peer(b"a")
    d.follow(p, "j", 8)
    for step in range(PREVIEW_CREDIT + 3):
        d.broadcast_preview("j", frame(20, step))
    previews = [codec.decode([bytes(f) for f in fr]) for _, fr in sock.sent]
    assert len(previews) == PREVIEW_CREDIT  # no acks yet
    assert all(m.count <= 8 for m in previews)
    d.ack(p, "j")
    d.flush(p)
    last = codec.decode([bytes(f) for f in sock.sent[-1][1]])
    assert last.step == PREVIEW_CREDIT + 2  # the newest waiting frame, not the first
    assert d.preview_cap("j") == 8 and d.preview_cap("other") == 100


def test_a_gone_client_is_forgotten_and_others_still_served(sock):
    d = Delivery(sock, DEFAULT_LIMITS, 100)
    a, b = d.peer(b"a"), d.peer(b"b")
    for p in (a, b):
        d.follow(p, "j", None)
    sock.gone.add(b"a")
    d.broadcast("j", JobState(job="j", state="running"))
    assert b"a" not in d.peers and sock.types(b"b") == ["job_state"]


def test_a_client_that_stops_reading_is_dropped(sock):
    d = Delivery(sock, DEFAULT_LIMITS, 100)
    p = d.peer(b"a")
    sock.full.add(b"a")
    for _ in range(MAX_OUTBOX + 1):
        d.reply(p, Pong(re="r"))
    assert b"a" not in d.peers


def test_idle_clients_are_forgotten_unless_they_follow_a_live_job(sock):
    d = Delivery(sock, DEFAULT_LIMITS, 100)
    a, b = d.peer(b"a"), d.peer(b"b")
    d.follow(b, "live", None)
    d.forget_idle(a.last_seen + 10**6, lambda j: j == "live")
    assert set(d.peers) == {b"b"}
    d.unfollow_all("live")
    assert b.following == {}


def test_outbox_is_bounded_in_bytes_and_other_clients_are_untouched(sock):
    from stabledreamer.server.delivery import DROP_OUTBOX_BYTES, MAX_OUTBOX_BYTES
    from stabledreamer_protocol import ResultChunk

    d = Delivery(sock, DEFAULT_LIMITS, 100)
    slow, ok = d.peer(b"slow"), d.peer(b"ok")
    sock.full.add(b"slow")
    data = np.zeros(1 << 20, np.uint8)
    chunk = ResultChunk(job="j", file="a.ply", index=0, offset=0, sha256="0" * 64, data=data)
    sent = 0
    while d.room(slow, data.nbytes):
        d.reply(slow, chunk)
        sent += 1
    assert 60 <= sent < 64  # 64 MiB of 1 MiB chunks and their headers
    assert slow.outbox_bytes <= MAX_OUTBOX_BYTES
    d.reply(ok, chunk)
    assert sock.types(b"ok") == ["result_chunk"]
    # Past the hard limit (only possible by ignoring room()), the client is dropped.
    while b"slow" in d.peers:
        d.reply(slow, chunk)
    assert slow.outbox_bytes <= DROP_OUTBOX_BYTES + data.nbytes + 4096
    assert b"ok" in d.peers
    # Bytes are given back as messages leave.
    d.reply(ok, Pong(re="x"))
    assert ok.outbox_bytes == 0
