"""Ownership: a job belongs to the key that submitted it; operators see and manage all; without
CURVE everyone is an operator. Every command that names a job, from every kind of client."""

from __future__ import annotations

import pytest
from test_delivery import FakeSocket

from stabledreamer.server.jobs import JobRecord
from stabledreamer.server.service import Service, ServiceConfig
from stabledreamer_protocol import (
    Attach,
    Cancel,
    Delete,
    Detach,
    Fetch,
    GetLogs,
    ListJobs,
    Status,
    Submit,
    codec,
)

ALICE, BOB, OPERATOR = "A" * 40, "B" * 40, "O" * 40


class Frame:
    def __init__(self, user: str) -> None:
        self.user = user

    def get(self, name: str) -> str:
        assert name == "User-Id"
        return self.user


def make(tmp_path, curve=True):
    service = Service(ServiceConfig(bind="tcp://127.0.0.1:1", state=tmp_path, prewarm=False,
                                    curve=curve))  # fmt: skip
    service.access.operators = {OPERATOR}
    sock = FakeSocket()
    service.delivery.send = sock
    rec = JobRecord(job="alices", seq=1, digest="d", kind="demo", preset="smoke", seed=1)
    rec.owner, rec.state = ALICE, "cancelled"
    service.store.create(rec, {})
    legacy = JobRecord(job="old", seq=2, digest="d", kind="demo", preset="smoke", seed=1)
    legacy.state = "cancelled"
    service.store.create(legacy, {})
    service.logbuffer.add("alice's line", job="alices")
    service.logbuffer.add("a service line")
    return service, sock


def ask(service, sock, user: str, msg):
    peer = service.delivery.peer(user.encode() or b"anon")
    service.access.identify(peer, Frame(user))
    service._read_one(peer, msg)
    frames = [fr for i, fr in sock.sent if i == peer.identity][-1]
    return codec.decode([bytes(f) for f in frames])


COMMANDS = [
    lambda j: Status(job=j),
    lambda j: Attach(job=j),
    lambda j: Detach(job=j),
    lambda j: Cancel(job=j),
    lambda j: Fetch(job=j, file="gaussians.ply"),
    lambda j: GetLogs(job=j),
    lambda j: Submit(job=j, target_format="demo", preset="smoke"),
    lambda j: Delete(job=j),  # last: it removes the job
]


@pytest.mark.parametrize("i", range(len(COMMANDS)))
@pytest.mark.parametrize(
    ("user", "job", "allowed"),
    [(ALICE, "alices", True), (BOB, "alices", False), (OPERATOR, "alices", True),
     (ALICE, "old", False), (OPERATOR, "old", True)],
)  # fmt: skip
def test_every_command_checks_the_owner(tmp_path, i, user, job, allowed):
    service, sock = make(tmp_path)
    reply = ask(service, sock, user, COMMANDS[i](job))
    forbidden = reply.TYPE == "error" and reply.code == "forbidden"
    assert forbidden != allowed, reply


@pytest.mark.parametrize("i", range(len(COMMANDS)))
def test_without_curve_everyone_may(tmp_path, i):
    service, sock = make(tmp_path, curve=False)
    reply = ask(service, sock, "", COMMANDS[i]("alices"))
    assert not (reply.TYPE == "error" and reply.code == "forbidden"), reply


@pytest.mark.parametrize(
    ("user", "seen"), [(ALICE, ["alices"]), (BOB, []), (OPERATOR, ["alices", "old"])]
)
def test_listing_and_logs_show_only_what_one_may_see(tmp_path, user, seen):
    service, sock = make(tmp_path)
    assert [j.job for j in ask(service, sock, user, ListJobs()).jobs] == seen
    lines = ask(service, sock, user, GetLogs()).lines
    assert ("alice's line" in lines) == ("alices" in seen)
    assert ("a service line" in lines) == (user == OPERATOR)


def test_a_new_job_belongs_to_its_submitter(tmp_path):
    service, sock = make(tmp_path)
    ask(service, sock, BOB, Submit(job="bobs", target_format="demo", preset="smoke"))
    assert service.store.get("bobs").owner == BOB
    assert ask(service, sock, ALICE, Status(job="bobs")).code == "forbidden"
    assert ask(service, sock, BOB, Status(job="bobs")).state == "queued"


def test_over_curve_the_key_is_the_owner(tmp_path, make_server):
    """Real sockets: the ZAP handler's User-Id is what the service compares."""
    from server_helpers import FAST, make_keys, reply_to, wait_state

    from stabledreamer_protocol.client import Client

    keys = tmp_path / "keys"
    make_keys(keys, "alice", "bob")
    s = make_server(tmp_path / "state", keys)
    s.wait_ready()

    def client(name: str) -> Client:
        return Client(s.endpoint, client_secret=keys / f"{name}.key_secret",
                      server_public=keys / "server.key").connect()  # fmt: skip

    with client("alice") as a, client("bob") as b, client("client") as op:
        for c in (a, b, op):
            c.handshake(timeout_s=20)
        job = a.submit(target_format="demo", preset="smoke", seed=1,
                       overrides={**FAST, "reconstruct.steps": 400})  # fmt: skip
        wait_state(a, job, ("queued", "running"), 30)
        assert reply_to(b, b.send(Status(job=job))).code == "forbidden"
        assert job not in [j.job for j in reply_to(b, b.list_jobs()).jobs]
        assert reply_to(op, op.send(Status(job=job))).job == job  # the local key operates
        assert job in [j.job for j in reply_to(op, op.list_jobs()).jobs]
        assert reply_to(a, a.send(Delete(job=job))).TYPE == "jobs"
