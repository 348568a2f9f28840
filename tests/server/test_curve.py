"""Security: CURVE keys from ``stabledreamer keys``, only listed client keys are served, a client
without the right key gets nothing, and no public bind without CURVE."""

from __future__ import annotations

import stat
import subprocess
import sys

import pytest
import zmq

from stabledreamer.server.security import SecurityError, check_bind
from stabledreamer_protocol import ErrorCode, ProtocolError
from stabledreamer_protocol.client import Client
from stabledreamer_protocol.keys import create_keypair


def test_keys_are_owner_only(server):
    keys = server.keys
    for secret in ("server.key_secret", "client.key_secret", "alice.key_secret"):
        assert stat.S_IMODE((keys / secret).stat().st_mode) == 0o600
    assert stat.S_IMODE(keys.stat().st_mode) == 0o700
    assert {p.name for p in (keys / "authorized").glob("*.key")} == {"client.key", "alice.key"}


def test_listed_key_served(server):
    with Client(
        server.endpoint,
        client_secret=server.keys / "alice.key_secret",
        server_public=server.keys / "server.key",
    ) as c:
        assert c.handshake(timeout_s=10).protocol.startswith("1.")


def test_wrong_or_missing_key_gets_nothing(server, tmp_path):
    _, stranger = create_keypair(tmp_path, "stranger")
    with Client(
        server.endpoint, client_secret=stranger, server_public=server.keys / "server.key"
    ) as c:
        with pytest.raises(ProtocolError) as e:
            c.handshake(timeout_s=2)
        assert e.value.code == ErrorCode.TIMEOUT
    # A plain (no CURVE) client: no connection, no reply, nothing.
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(server.endpoint)
        sock.send_multipart([b'{"v":1,"type":"hello","id":"x","body":{"protocol":"1.0"}}'])
        assert sock.poll(1500) == 0
    finally:
        sock.close(0)
    assert server.proc.poll() is None


def test_public_bind_needs_curve(tmp_path):
    for bind in ("tcp://*:5999", "tcp://192.168.1.5:5999", "tcp://[::]:5999"):
        with pytest.raises(SecurityError, match="without CURVE"):
            check_bind(bind, curve=False)
        check_bind(bind, curve=True)
    check_bind("tcp://127.0.0.1:5999", curve=False)
    r = subprocess.run(
        [sys.executable, "-m", "stabledreamer", "serve", "--bind", "tcp://0.0.0.0:5999"]
        + ["--no-curve", "--state", str(tmp_path / "state")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2
    assert "without CURVE" in r.stderr and r.stderr.count("\n") == 1
    assert not (tmp_path / "state").exists()
