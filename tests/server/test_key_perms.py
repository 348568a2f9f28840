"""Key-folder permissions: a writable ``authorized/`` is repaired (whoever can write there can let
themselves in), a readable server secret is refused in one line with the fix."""

from __future__ import annotations

import stat
import subprocess
import sys

import pytest
import zmq

from stabledreamer.server.security import SecurityError, enable_curve
from stabledreamer_protocol.keys import KeyFiles, ensure_keys


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("dir_mode", [0o777, 0o775, 0o757, 0o733, 0o700])
@pytest.mark.parametrize("key_mode", [0o666, 0o646, 0o664, 0o644, 0o600])
def test_authorized_is_made_owner_only(tmp_path, dir_mode, key_mode):
    files = ensure_keys(tmp_path / "keys")
    files.authorized.chmod(dir_mode)
    (files.authorized / "client.key").chmod(key_mode)
    ensure_keys(tmp_path / "keys")
    assert mode(files.authorized) == 0o700
    assert mode(files.authorized / "client.key") & 0o022 == 0


@pytest.mark.parametrize("secret_mode", [0o644, 0o640, 0o604, 0o660, 0o606, 0o600])
def test_a_readable_server_secret_is_one_clear_error(tmp_path, secret_mode):
    files = ensure_keys(tmp_path / "keys")
    files.server_secret.chmod(secret_mode)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    auth = None
    try:
        if secret_mode == 0o600:
            auth, _ = enable_curve(ctx, sock, tmp_path / "keys")
        else:
            with pytest.raises(SecurityError, match="chmod 600"):
                enable_curve(ctx, sock, tmp_path / "keys")
    finally:
        if auth is not None:
            auth.stop()
        sock.close(0)
        ctx.term()


def test_serve_says_it_in_one_line(tmp_path):
    files = KeyFiles(tmp_path / "keys")
    ensure_keys(files.directory)
    files.server_secret.chmod(0o644)
    r = subprocess.run(
        [sys.executable, "-m", "stabledreamer", "serve", "--bind", "tcp://127.0.0.1:0",
         "--keys", str(files.directory), "--state", str(tmp_path / "state")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode != 0
    assert "Traceback" not in r.stderr and "chmod 600" in r.stderr, r.stderr
