"""CURVE key files (owner-only secrets), loading, loopback detection, and the import rule."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest
import zmq.auth

from stabledreamer_protocol import ProtocolError, is_loopback
from stabledreamer_protocol.keys import (
    check_secret_file,
    create_keypair,
    ensure_keys,
    load_public,
    load_secret,
)

posix_only = pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@posix_only
def test_secret_key_file_is_owner_only(tmp_path):
    old = os.umask(0)  # even with a permissive umask
    try:
        public, secret = create_keypair(tmp_path / "k", "server")
    finally:
        os.umask(old)
    assert mode(secret) == 0o600
    assert mode(public) & 0o077 in (0o044, 0o000)
    assert mode(tmp_path / "k") == 0o700
    pub, sec = load_secret(secret)
    assert len(pub) == 40 and len(sec) == 40 and load_public(public) == pub
    # Readable by pyzmq's own loader and authenticator.
    assert zmq.auth.load_certificate(str(secret)) == (pub, sec)
    assert list(tmp_path.glob("k/.*")) == []  # no temp files left


@posix_only
def test_loose_secret_file_is_refused(tmp_path):
    _, secret = create_keypair(tmp_path, "client")
    os.chmod(secret, 0o644)
    with pytest.raises(ProtocolError) as e:
        check_secret_file(secret)
    assert e.value.code == "insecure_key_file" and "chmod 600" in e.value.hint
    with pytest.raises(ProtocolError):
        load_secret(secret)


def test_ensure_keys_creates_once(tmp_path):
    files = ensure_keys(tmp_path / "keys")
    first = files.server_secret.read_bytes()
    again = ensure_keys(tmp_path / "keys")
    assert again.server_secret.read_bytes() == first  # kept, not regenerated
    authorized = zmq.auth.load_certificates(str(files.authorized))
    assert load_public(files.client_public) in authorized


@pytest.mark.parametrize(
    "endpoint, expected",
    [
        ("tcp://127.0.0.1:5757", True),
        ("tcp://127.0.0.2:1", True),
        ("tcp://localhost:5757", True),
        ("tcp://[::1]:5757", True),
        ("ipc:///tmp/sd.sock", True),
        ("inproc://x", True),
        ("tcp://*:5757", False),
        ("tcp://0.0.0.0:5757", False),
        ("tcp://192.168.1.5:5757", False),
        ("tcp://eth0:5757", False),
        ("tcp://[::]:5757", False),
        ("tcp://127.0.0.1;10.0.0.1:5757", False),
        ("udp://127.0.0.1:1", False),
    ],
)
def test_is_loopback(endpoint, expected):
    assert is_loopback(endpoint) is expected


def test_package_imports_neither_torch_nor_bpy():
    code = (
        "import sys, stabledreamer_protocol, stabledreamer_protocol.client, "
        "stabledreamer_protocol.keys; "
        "bad = {'torch', 'bpy'} & set(sys.modules); assert not bad, bad; print('ok')"
    )
    shared = os.path.join(os.path.dirname(__file__), "..", "..", "shared")
    env = {**os.environ, "PYTHONPATH": os.path.abspath(shared)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr
