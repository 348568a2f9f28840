"""The client against a minimal ROUTER peer on real loopback sockets (plain, HMAC and CURVE)."""

from __future__ import annotations

import hashlib
import threading
import time

import numpy as np
import pytest
import zmq
from protocol_samples import gaussians
from zmq.auth.thread import ThreadAuthenticator

from stabledreamer_protocol import (
    DebugImage,
    Error,
    ErrorCode,
    Fetch,
    Hello,
    Jobs,
    JobState,
    Pong,
    Preview,
    PreviewAck,
    Progress,
    ProtocolError,
    Result,
    ResultChunk,
    ResultFile,
    decode,
    encode,
    recv_routed,
    send_routed,
)
from stabledreamer_protocol.client import Client, ResultDownloaded
from stabledreamer_protocol.keys import apply_server_curve, create_keypair, ensure_keys
from stabledreamer_protocol.messages import Attach, Cancel, ListJobs, Ping, Status, Submit

CHUNK = 64 * 1024
FILES = {
    "mesh.glb": np.random.default_rng(0).bytes(3 * CHUNK + 123),  # 4 chunks
    "gaussians.ply": b"ply\nformat binary_little_endian 1.0\nend_header\n",
    "empty.txt": b"",
}


class Peer:
    """A scripted stand-in for the backend: one ROUTER served by a thread."""

    def __init__(self, ctx, *, curve_secret=None, hmac_key=None, previews=3):
        self.sock = ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        if curve_secret is not None:
            apply_server_curve(self.sock, curve_secret)
        self.port = self.sock.bind_to_random_port("tcp://127.0.0.1")
        self.endpoint = f"tcp://127.0.0.1:{self.port}"
        self.key = hmac_key
        self.previews = previews
        self.received: list = []
        self.followers: dict[str, set[bytes]] = {}
        self.done: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def close(self):
        self._stop.set()
        self._thread.join(5)

    def _run(self):
        try:
            while not self._stop.is_set():
                if self.sock.poll(10):
                    ident, msg = recv_routed(self.sock, key=self.key)
                    self.received.append(msg)
                    for to, reply in self.answer(ident, msg):
                        send_routed(self.sock, to, reply, key=self.key)
        finally:
            self.sock.close(0)

    def _to_followers(self, job, msgs):
        return [(who, m) for m in msgs for who in sorted(self.followers.get(job, ()))]

    def answer(self, ident, msg):
        if isinstance(msg, ProtocolError):
            return [(ident, Error.from_exception(msg))]
        if isinstance(msg, Hello):
            return [(ident, Hello(re=msg.id, device="cpu", presets=["fast"], limits={"x": 1}))]
        if isinstance(msg, Ping):
            return [(ident, Pong(re=msg.id))]
        if isinstance(msg, ListJobs):
            return [(ident, Jobs(re=msg.id))]
        job = msg.job
        if isinstance(msg, Submit):
            self.followers.setdefault(job, set()).add(ident)
            return [(ident, JobState(re=msg.id, job=job, state="queued"))] + self._run_job(job)
        if isinstance(msg, Attach | Status | Cancel) and job not in self.followers:
            return [(ident, Error(re=msg.id, job=job, code=ErrorCode.UNKNOWN_JOB, message=job))]
        if isinstance(msg, Attach):
            self.followers[job].add(ident)
            out = [(ident, JobState(re=msg.id, job=job, state="done"))]
            return out + [(ident, self._manifest(job))] if job in self.done else out
        if isinstance(msg, Cancel):
            return [(ident, JobState(re=msg.id, job=job, state="cancelled"))]
        if isinstance(msg, Fetch):
            data = FILES[msg.file][msg.index * CHUNK : (msg.index + 1) * CHUNK]
            chunk = ResultChunk(
                re=msg.id,
                job=job,
                file=msg.file,
                index=msg.index,
                offset=msg.index * CHUNK,
                sha256=hashlib.sha256(data).hexdigest(),
                data=np.frombuffer(data, np.uint8),
            )
            return [(ident, chunk)]
        return []  # preview_ack, detach

    def _manifest(self, job):
        files = [ResultFile(n, len(b), hashlib.sha256(b).hexdigest()) for n, b in FILES.items()]
        return Result(job=job, files=files, chunk_size=CHUNK, metrics={"psnr": 30.0})

    def _run_job(self, job):
        msgs = [JobState(job=job, state="running", stage="stage1", total=3)]
        for step in range(1, self.previews + 1):
            msgs.append(Progress(job=job, stage="stage1", step=step, total=3, losses={"sds": 1.0}))
            msgs.append(Preview.from_gaussians(job, **gaussians(50, step), step=step))
        image = np.zeros((8, 24, 3), np.uint8)
        msgs.append(DebugImage(job=job, step=3, labels=["render", "noisy", "x0"], image=image))
        msgs.append(JobState(job=job, state="done", step=3, total=3))
        msgs.append(self._manifest(job))
        self.done.add(job)
        return self._to_followers(job, msgs)


@pytest.fixture
def peer(ctx):
    p = Peer(ctx)
    yield p
    p.close()


def collect_until(client, predicate, timeout_s=5.0) -> list:
    """Poll (never blocking in poll_events) until an event matches; returns all events."""
    events, deadline = [], time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        new = client.poll_events()
        events += new
        if any(predicate(e) for e in new):
            return events
        client.socket.poll(20)
    raise AssertionError(f"timed out; got {[type(e).__name__ for e in events]}")


def test_submit_to_downloaded_result(ctx, peer):
    with Client(peer.endpoint, context=ctx) as client:
        hello = client.handshake(timeout_s=2)
        assert hello.device == "cpu" and hello.presets == ["fast"]
        assert client.socket.getsockopt(zmq.LINGER) == 0
        job = client.submit("a ceramic teapot", seed=1)
        events = collect_until(client, lambda e: isinstance(e, ResultDownloaded))

    states = [e.state for e in events if isinstance(e, JobState)]
    assert states == ["queued", "running", "done"]
    assert [e.step for e in events if isinstance(e, Progress)] == [1, 2, 3]
    previews = [e for e in events if isinstance(e, Preview)]
    assert 1 <= len(previews) <= 3 and previews[-1].step == 3
    np.testing.assert_array_equal(previews[-1].gaussians()["means"], gaussians(50, 3)["means"])
    assert any(isinstance(e, DebugImage) and e.image.shape == (8, 24, 3) for e in events)
    assert any(isinstance(e, Result) for e in events)
    done = events[-1]
    assert done.job == job and done.files == FILES
    acks = [m for m in peer.received if isinstance(m, PreviewAck)]
    assert len(acks) == 3  # every received preview is acknowledged (flow control)


def test_previews_are_coalesced_latest_wins(ctx):
    peer = Peer(ctx, previews=3)
    try:
        with Client(peer.endpoint, context=ctx, auto_fetch=False) as client:
            client.handshake(timeout_s=2)
            client.submit("x")
            # wait_for leaves every earlier event queued; poll_events then returns them at once
            assert client.wait_for(lambda e: isinstance(e, Result), 5) is not None
            events = client.poll_events()
    finally:
        peer.close()
    previews = [e for e in events if isinstance(e, Preview)]
    assert [p.step for p in previews] == [3]
    assert client.dropped_previews == 2
    assert [e.step for e in events if isinstance(e, Progress)] == [1, 2, 3]  # never dropped


def test_second_client_attaches_and_downloads(ctx, peer):
    with Client(peer.endpoint, context=ctx) as a, Client(peer.endpoint, context=ctx) as b:
        a.handshake(timeout_s=2)
        b.handshake(timeout_s=2)
        job = a.submit("a chair")
        assert a.download(job, timeout_s=5) == FILES
        b.attach(job)
        assert b.download(job, timeout_s=5) == FILES
        assert b.jobs[job].state == "done"


def test_errors_cancel_status_ping(ctx, peer):
    with Client(peer.endpoint, context=ctx) as client:
        client.handshake(timeout_s=2)
        rid = client.status("no-such-job")
        err = client.wait_for(lambda e: isinstance(e, Error), 2)
        assert err.code == ErrorCode.UNKNOWN_JOB and err.re == rid and err.hint
        job = client.submit("x", job="my-job")
        client.cancel(job)
        state = client.wait_for(lambda e: isinstance(e, JobState) and e.state == "cancelled", 2)
        assert state.job == "my-job"
        rid = client.ping()
        assert client.wait_for(lambda e: isinstance(e, Pong), 2).re == rid
        with pytest.raises(ProtocolError) as e:
            client.submit("x" * 3000)  # refused before sending
        assert e.value.code == ErrorCode.PROMPT_TOO_LONG


def test_bad_message_gets_an_error_reply_and_peer_keeps_serving(ctx, peer):
    raw = ctx.socket(zmq.DEALER)
    raw.setsockopt(zmq.LINGER, 0)
    try:
        raw.connect(peer.endpoint)
        raw.send_multipart([b'{"v": 1, "type": "submit", "id": "abc", "job": "j"}', b"junk"])
        assert raw.poll(2000)
        reply = decode(raw.recv_multipart())
        assert isinstance(reply, Error) and reply.code == ErrorCode.FRAME_COUNT
        assert reply.re == "abc" and reply.job == "j"
        raw.send_multipart(encode(Ping()))
        assert raw.poll(2000) and isinstance(decode(raw.recv_multipart()), Pong)
    finally:
        raw.close(0)


def test_hmac_signed_session(ctx):
    peer = Peer(ctx, hmac_key=b"secret")
    try:
        with Client(peer.endpoint, context=ctx, hmac_key=b"secret") as good:
            assert good.handshake(timeout_s=2).device == "cpu"
        with Client(peer.endpoint, context=ctx, hmac_key=b"wrong") as bad:
            with pytest.raises(ProtocolError):
                bad.handshake(timeout_s=0.5)
            assert bad.bad_messages >= 1  # the peer's reply does not verify here either
    finally:
        peer.close()
    assert any(
        isinstance(m, ProtocolError) and m.code == ErrorCode.BAD_SIGNATURE for m in peer.received
    )


def test_handshake_times_out_without_backend(ctx):
    with zmq.Socket(ctx, zmq.ROUTER) as probe:
        port = probe.bind_to_random_port("tcp://127.0.0.1")
    with Client(f"tcp://127.0.0.1:{port}", context=ctx) as client:
        t0 = time.monotonic()
        with pytest.raises(ProtocolError) as e:
            client.handshake(timeout_s=0.3)
        assert e.value.code == ErrorCode.TIMEOUT and time.monotonic() - t0 < 2


@pytest.mark.skipif(not zmq.has("curve"), reason="libzmq without CURVE")
def test_curve_right_key_works_wrong_key_gets_nothing(ctx, tmp_path):
    files = ensure_keys(tmp_path / "keys")
    _, stranger_secret = create_keypair(tmp_path / "stranger", "client")
    auth = ThreadAuthenticator(ctx)
    auth.start()
    auth.configure_curve(domain="*", location=str(files.authorized))
    peer = Peer(ctx, curve_secret=files.server_secret)
    try:
        with Client(peer.endpoint, context=ctx, keys=files) as good:
            assert good.handshake(timeout_s=3).device == "cpu"
        n = len(peer.received)
        stranger = Client(
            peer.endpoint,
            context=ctx,
            client_secret=stranger_secret,
            server_public=files.server_public,
        )
        with stranger, pytest.raises(ProtocolError) as e:
            stranger.handshake(timeout_s=0.5)
        assert e.value.code == ErrorCode.TIMEOUT
        with Client(peer.endpoint, context=ctx) as plain, pytest.raises(ProtocolError):
            plain.handshake(timeout_s=0.3)  # no CURVE at all
        assert len(peer.received) == n  # nothing from either got through
    finally:
        peer.close()
        auth.stop()


def test_download_reassembly_checks_every_chunk():
    from stabledreamer_protocol.client import Download

    data = bytes(range(256)) * 10  # 2560 bytes, 3 chunks of 1024
    result = Result(
        job="j",
        files=[ResultFile("a.bin", len(data), hashlib.sha256(data).hexdigest())],
        chunk_size=1024,
    )

    def chunk(i, payload=None, offset=None, sha=None):
        payload = data[i * 1024 : (i + 1) * 1024] if payload is None else payload
        return ResultChunk(
            job="j",
            file="a.bin",
            index=i,
            offset=i * 1024 if offset is None else offset,
            sha256=sha or hashlib.sha256(payload).hexdigest(),
            data=np.frombuffer(payload, np.uint8),
        )

    dl = Download(job="j", manifest=result)
    for i in (2, 0, 0):  # out of order, with a duplicate
        dl.accept(chunk(i))
    assert not dl.done and 0 < dl.progress < 1
    for bad, code in (
        (chunk(1, sha="0" * 64), ErrorCode.CHECKSUM),
        (chunk(1, offset=5), ErrorCode.BAD_FIELD),
        (chunk(1, payload=b"short"), ErrorCode.BAD_FIELD),
        (chunk(7), ErrorCode.BAD_FIELD),
    ):
        with pytest.raises(ProtocolError) as e:
            dl.accept(bad)
        assert e.value.code == code
    dl.accept(chunk(1))
    assert dl.done and bytes(dl.buffers["a.bin"]) == data

    wrong = Result(job="j", files=[ResultFile("a.bin", 4, "0" * 64)], chunk_size=1024)
    with pytest.raises(ProtocolError) as e:
        Download(job="j", manifest=wrong).accept(chunk(0, payload=b"abcd"))
    assert e.value.code == ErrorCode.CHECKSUM
