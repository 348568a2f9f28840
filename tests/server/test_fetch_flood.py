"""A client that asks for result chunks and never reads them: the service queues a bounded
number of bytes for it, refuses the rest with ``busy``, and serves everyone else."""

from __future__ import annotations

import hashlib

from test_delivery import FakeSocket

from stabledreamer.server.delivery import MAX_OUTBOX_BYTES
from stabledreamer.server.jobs import JobRecord
from stabledreamer.server.service import Service, ServiceConfig
from stabledreamer_protocol import Fetch, codec


def test_unread_fetches_are_bounded(tmp_path):
    service = Service(  # without CURVE: single-user, so ownership is not what is tested here
        ServiceConfig(bind="tcp://127.0.0.1:1", state=tmp_path, prewarm=False, curve=False)
    )
    sock = FakeSocket()
    service.delivery.send = sock
    data = bytes(range(256)) * 4096  # 1 MiB
    rec = JobRecord(job="j", seq=1, digest="d", kind="demo", preset="smoke", seed=1)
    rec.state = "done"
    rec.result = {
        "files": [
            {
                "name": "gaussians.ply",
                "size": len(data),
                "sha256": hashlib.sha256(data).hexdigest(),
                "media_type": "application/x-ply",
            }
        ],
        "chunk_size": len(data),
        "metrics": {},
    }
    service.store.create(rec, {})
    (service.store.run_dir("j")).mkdir()
    (service.store.run_dir("j") / "gaussians.ply").write_bytes(data)
    slow, other = service.delivery.peer(b"slow"), service.delivery.peer(b"other")
    for peer in (slow, other):
        service.access.identify(peer, None)  # as the service does for every message
    sock.full.add(b"slow")
    for _ in range(3000):  # the attack: 3,000 fetches of a 1 MiB chunk, never read
        service._read_one(slow, Fetch(job="j", file="gaussians.ply", index=0))
    assert b"slow" in service.delivery.peers  # still a client, just refused
    assert slow.outbox_bytes <= MAX_OUTBOX_BYTES
    service._read_one(other, Fetch(job="j", file="gaussians.ply", index=0))
    (got,) = [codec.decode([bytes(f) for f in fr]) for i, fr in sock.sent if i == b"other"]
    assert got.TYPE == "result_chunk" and bytes(got.data) == data
    sock.full.clear()
    service.delivery.flush(slow)
    replies = [codec.decode([bytes(f) for f in fr]) for i, fr in sock.sent if i == b"slow"]
    chunks = [m for m in replies if m.TYPE == "result_chunk"]
    busy = [m for m in replies if m.TYPE == "error"]
    assert len(chunks) + len(busy) == 3000
    assert 0 < len(chunks) <= MAX_OUTBOX_BYTES // len(data)
    assert all(m.code == "busy" for m in busy)
    assert service.store.get("j").fetched
