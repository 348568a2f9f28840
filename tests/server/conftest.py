"""Fixtures of the service tests (helpers in ``server_helpers.py``)."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import pytest
from server_helpers import Server, make_keys


@pytest.fixture
def make_server(tmp_path):
    """Start servers; all are killed at the end of the test."""
    servers: list[Server] = []

    def make(state: Path, keys: Path, *extra: str, port: int | None = None) -> Server:
        log = tmp_path / f"server{len(servers)}.log"
        s = Server(state, keys, log, *extra, port=port)
        servers.append(s)
        return s.start()

    yield make
    for s in servers:
        s.stop()


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    """The shared server of the service tests (CURVE on, at most 3 jobs queued or running)."""
    root = tmp_path_factory.mktemp("service")
    make_keys(root / "keys", "alice")
    s = Server(root / "state", root / "keys", root / "server.log", "--max-queue", "3")
    s.start()
    try:
        s.wait_ready()
        yield s
    finally:
        if s.proc.poll() is None:
            s.signal(signal.SIGTERM)
            try:
                s.proc.wait(20)
            except subprocess.TimeoutExpired:
                pass
        s.stop()
