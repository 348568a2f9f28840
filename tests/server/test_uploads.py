"""Large submits are checked and written off the service loop (``server/uploads.py``): other
clients are answered while an upload is being written, the uploader's later messages wait behind
it in order, and a failed or abandoned upload leaves nothing behind."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from server_helpers import free_port

from stabledreamer.atomic import DiskFullError
from stabledreamer.server.jobs import STAGING_PREFIX, JobStore
from stabledreamer.server.service import Service, ServiceConfig
from stabledreamer_protocol import Error, JobState, Pong, Submit
from stabledreamer_protocol.client import Client

BIG = np.frombuffer(np.random.default_rng(0).bytes(64 << 10), np.uint8)
"""Over the tests' offload threshold (1 KiB); its bytes are not a mesh (no job starts here)."""


def make_service(tmp_path) -> Service:
    cfg = ServiceConfig(bind=f"tcp://127.0.0.1:{free_port()}", state=tmp_path / "state",
                        curve=False, prewarm=False, max_running=0,
                        upload_offload_bytes=1024)  # fmt: skip
    s = Service(cfg)
    s.open()
    return s


class Loop:
    """The service's loop on a thread (the clients block on the test's thread)."""

    def __init__(self, service: Service) -> None:
        self.service, self.running = service, True
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while self.running:
            self.service.step(timeout_ms=10)

    def stop(self) -> None:
        self.running = False
        self.thread.join(10)


@pytest.fixture
def service(tmp_path):
    s = make_service(tmp_path)
    loop = Loop(s)
    yield s
    loop.stop()
    s.close()


class Gate:
    """Holds ``JobStore.stage`` (the upload thread's file writing) until opened."""

    def __init__(self, store: JobStore, fail: Exception | None = None) -> None:
        self.entered = threading.Event()
        self.open = threading.Event()
        self.calls = 0
        real = store.stage

        def stage(files):
            self.calls += 1
            self.entered.set()
            assert self.open.wait(30)
            if fail is not None:
                raise fail
            return real(files)

        store.stage = stage


def client(service) -> Client:
    c = Client(service.cfg.bind).connect()
    c.handshake()
    return c


def serve_until(service, clients, predicate, timeout_s=20.0) -> dict[Client, list]:
    """Collect every client's messages until ``predicate(got)`` (the loop thread serves)."""
    got: dict[Client, list] = {c: [] for c in clients}
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for c in clients:
            got[c] += c.poll_events()
        if predicate(got):
            return got
        time.sleep(0.005)
    raise AssertionError(f"timed out; got {got}")


def submit_big(c: Client, job: str, data=BIG, **fields) -> str:
    """Returns the submit message's id (its replies carry it in ``re``)."""
    fields = {"preset": "smoke", "seed": 1, **fields}
    return c.send(Submit(job=job, target_format="ply", target_file=data, **fields))


def replies(events, rid):
    return [e for e in events if getattr(e, "re", None) == rid]


def staging_folders(service):
    return [p for p in service.store.root.iterdir() if p.name.startswith(STAGING_PREFIX)]


def test_other_clients_are_answered_while_an_upload_is_written(service):
    gate = Gate(service.store)
    with client(service) as a, client(service) as b:
        sid = submit_big(a, "big")
        serve_until(service, [a], lambda got: gate.entered.is_set())
        pid = b.ping()
        got = serve_until(service, [a, b], lambda got: replies(got[b], pid))
        assert isinstance(replies(got[b], pid)[0], Pong)
        assert not replies(got[a], sid), "the submit was answered before its files were written"
        assert service.store.get("big") is None
        gate.open.set()
        got = serve_until(service, [a], lambda got: replies(got[a], sid))
        (state,) = replies(got[a], sid)
        assert isinstance(state, JobState) and state.state == "queued"
    folder = service.store.dir("big")
    assert (folder / "target.ply").read_bytes() == BIG.tobytes()
    assert (folder / "job.json").is_file()
    assert not staging_folders(service)


def test_the_uploaders_later_messages_wait_behind_it_in_order(service):
    gate = Gate(service.store)
    with client(service) as a:
        sid = submit_big(a, "big")
        serve_until(service, [a], lambda got: gate.entered.is_set())
        qid = a.status("big")  # would be unknown_job if answered before the upload
        hid = a.ping()  # names no job: answered at once
        got = serve_until(service, [a], lambda got: replies(got[a], hid))
        assert not replies(got[a], sid) and not replies(got[a], qid)
        gate.open.set()
        more = serve_until(service, [a], lambda got: replies(got[a], qid))[a]
        order = [e.re for e in more if getattr(e, "re", None) in (sid, qid)]
        assert order == [sid, qid]
        assert all(isinstance(e, JobState) for e in replies(more, qid))


def test_a_failed_upload_leaves_nothing_and_the_client_goes_on(service):
    full = DiskFullError("disk full: writing target.ply", folder=service.store.root, free=0)
    gate = Gate(service.store, fail=full)
    gate.open.set()
    with client(service) as a:
        sid = submit_big(a, "big")
        qid = a.status("big")
        got = serve_until(service, [a], lambda got: replies(got[a], qid))[a]
        (err,) = replies(got, sid)
        assert isinstance(err, Error) and err.code == "disk_full"
        (unknown,) = replies(got, qid)
        assert isinstance(unknown, Error) and unknown.code == "unknown_job"
    assert service.store.get("big") is None and not staging_folders(service)


def test_a_bad_request_is_refused_from_the_upload_thread(service):
    with client(service) as a:
        sid = submit_big(a, "bad", overrides={"no.such.key": 1})
        got = serve_until(service, [a], lambda got: replies(got[a], sid))[a]
        (err,) = replies(got, sid)
        assert isinstance(err, Error) and err.code == "bad_override"
    assert not staging_folders(service)


def test_identical_uploads_of_one_job_make_one_job_and_a_different_one_conflicts(service):
    with client(service) as a, client(service) as b, client(service) as c:
        ids = {a: submit_big(a, "same"), b: submit_big(b, "same")}
        other = BIG.copy()
        other[0] ^= 1
        ids[c] = submit_big(c, "same", other)
        got = serve_until(service, [a, b, c], lambda got: all(replies(got[k], ids[k]) for k in ids))
    answers = {k: replies(got[k], ids[k])[0] for k in ids}
    assert isinstance(answers[a], JobState) and isinstance(answers[b], JobState)
    assert isinstance(answers[c], Error) and answers[c].code == "job_conflict"
    assert [r.job for r in service.store.records.values()] == ["same"]
    assert not staging_folders(service)


def test_an_upload_cut_short_by_a_stop_leaves_nothing(tmp_path):
    service = make_service(tmp_path)
    loop = Loop(service)
    gate = Gate(service.store)
    with client(service) as a:
        submit_big(a, "big")
        serve_until(service, [a], lambda got: gate.entered.is_set())
        loop.stop()
        threading.Timer(0.2, gate.open.set).start()
        service.close()  # waits for the upload thread, then removes what it staged
    assert service.store.get("big") is None and not staging_folders(service)
    # and a staging folder left by a killed process is removed on the next start
    leftover = service.store.root / f"{STAGING_PREFIX}0123"
    leftover.mkdir()
    (leftover / "target.ply").write_bytes(b"x")
    store = JobStore(service.cfg.state)
    store.load()
    assert not leftover.exists() and not store.records


def test_what_waits_behind_an_upload_is_bounded_in_count_and_bytes(tmp_path):
    from stabledreamer.server.delivery import Peer
    from stabledreamer.server.uploads import Uploads
    from stabledreamer_protocol import Ping

    store = JobStore(tmp_path)
    uploads = Uploads(None, store, max_waiting=3, max_waiting_bytes=100_000)
    try:
        peer = Peer(b"a")
        big = Submit(job="j", target_format="ply", target_file=BIG)  # 64 KiB of buffers
        assert uploads.wait(peer, big)
        assert not uploads.wait(peer, Submit(job="k", target_format="ply", target_file=BIG))
        assert uploads.wait(peer, Ping()) and uploads.wait(peer, Ping())
        assert not uploads.wait(peer, Ping())  # the count bound
        assert uploads.next_waiting(peer)[1] is big  # in order; its bytes are freed
        assert uploads.wait(peer, Submit(job="k", target_format="ply", target_file=BIG))
    finally:
        uploads.close()
