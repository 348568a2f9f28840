"""Unauthenticated TCP connections that never finish the CURVE handshake, under a desktop's
descriptor limit: the service raises its limit, drops them after the handshake interval, keeps
serving an authorised client, and does not spin."""

from __future__ import annotations

import resource
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from server_helpers import Server, make_keys

FLOOD = 400
"""Idle connections: more than the 256 descriptors the service is given."""


class LimitedServer(Server):
    def __init__(self, *a, nofile: tuple[int, int], **kw) -> None:
        super().__init__(*a, **kw)
        self.nofile = nofile

    def start(self) -> LimitedServer:
        cmd = [sys.executable, "-m", "stabledreamer", "serve", "--bind", self.endpoint]
        cmd += ["--state", str(self.state), "--keys", str(self.keys), "--handshake-s", "3"]
        self._log = open(self.log_path, "ab")
        nofile = self.nofile
        self.proc = subprocess.Popen(
            cmd,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, nofile),
        )
        return self


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100.0  # utime + stime, in clock ticks


@pytest.fixture
def limited(tmp_path):
    servers = []

    def make(nofile):
        make_keys(tmp_path / "keys")
        s = LimitedServer(tmp_path / "state", tmp_path / "keys", tmp_path / "s.log", nofile=nofile)
        servers.append(s)
        s.start().wait_ready()
        return s

    yield make
    for s in servers:
        s.stop()


def test_the_limit_is_raised_to_the_hard_limit(limited):
    s = limited((256, 4096))
    limits = Path(f"/proc/{s.proc.pid}/limits").read_text()
    line = next(x for x in limits.splitlines() if x.startswith("Max open files"))
    assert line.split()[3:5] == ["4096", "4096"], line


def test_idle_unauthenticated_connections_do_not_starve_clients(limited):
    s = limited((256, 256))  # no room to raise: only dropping the idle connections helps
    idle = []
    try:
        for _ in range(FLOOD):
            c = socket.socket()
            c.setblocking(False)
            c.connect_ex(("127.0.0.1", s.port))
            idle.append(c)
        time.sleep(1.0)
        cpu0, t0 = cpu_s(s.proc.pid), time.monotonic()
        with s.client() as c:
            hello = c.handshake(timeout_s=20.0)
        served_s = time.monotonic() - t0
        busy = (cpu_s(s.proc.pid) - cpu0) / max(served_s, 1e-3)
        print(f"authorised hello answered after {served_s:.1f} s, service CPU {100 * busy:.0f} %")
        assert hello.protocol and served_s < 15.0
        assert s.proc.poll() is None, s.log()
        # Once the stale connections are gone the service idles (no spinning on accept).
        time.sleep(4.0)
        cpu1, t1 = cpu_s(s.proc.pid), time.monotonic()
        time.sleep(3.0)
        idle_cpu = (cpu_s(s.proc.pid) - cpu1) / (time.monotonic() - t1)
        print(f"service CPU after the flood: {100 * idle_cpu:.0f} %")
        assert idle_cpu < 0.5
    finally:
        for c in idle:
            c.close()
