"""Helpers of the service tests: a real ``stabledreamer serve`` subprocess on loopback (CURVE
on, keys made by ``stabledreamer keys``), real DEALER clients, tiny jobs. Fixtures are in
``conftest.py``; every server is killed in a finaliser, every wait is bounded.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from stabledreamer_protocol import Error, JobState
from stabledreamer_protocol.client import Client
from stabledreamer_protocol.keys import KeyFiles

# A coloured octahedron as an ASCII PLY: the smallest target that reconstructs in a second.
OCTAHEDRON_PLY = b"""ply
format ascii 1.0
element vertex 6
property float x
property float y
property float z
property uchar red
property uchar green
property uchar blue
element face 8
property list uchar int vertex_indices
end_header
1 0 0 255 0 0
-1 0 0 0 255 0
0 1 0 0 0 255
0 -1 0 255 255 0
0 0 1 255 255 255
0 0 -1 40 40 40
3 0 2 4
3 2 1 4
3 1 3 4
3 3 0 4
3 2 0 5
3 1 2 5
3 3 1 5
3 0 3 5
"""
TARGET = np.frombuffer(OCTAHEDRON_PLY, dtype=np.uint8)
FAST = {
    "eval_resolution": 16,
    "oracle.bank_views": 4,
    "reconstruct.strategy.max_gaussians": 1000,
}
"""Overrides that make a ``smoke`` job's fixed costs small."""
FAST_TEXT = {
    "detail.resolution": 64,
    "stable_diffusion.resolution": 64,
    "init.num_points": 1000,
    "camera.batch_size": 2,
    "eval_resolution": 32,
    "mesh.grid": 32,
    "mesh.faces": 2000,
    "mesh.texture_size": 64,
    "mesh.views": 4,
    "mesh.view_resolution": 32,
}
"""Overrides that make a text job with the tiny models quick (set the step counts with them)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def children_of(pid: int) -> list[int]:
    """Process ids whose parent is ``pid`` (Linux /proc)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid:
            out.append(int(entry.name))
    return out


def workers_of(pid: int) -> list[int]:
    """The service's job workers (spawned children, not multiprocessing's resource tracker)."""
    out = []
    for child in children_of(pid):
        try:
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
        except OSError:
            continue
        if b"spawn_main" in cmdline:
            out.append(child)
    return out


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


class Server:
    """One ``stabledreamer serve`` subprocess."""

    def __init__(self, state: Path, keys: Path, log: Path, *extra: str, port: int | None = None):
        self.port = port or free_port()
        self.endpoint = f"tcp://127.0.0.1:{self.port}"
        self.state, self.keys, self.log_path, self.extra = state, keys, log, extra
        self.proc: subprocess.Popen | None = None

    def start(self) -> Server:
        cmd = [sys.executable, "-m", "stabledreamer", "serve", "--bind", self.endpoint]
        cmd += ["--state", str(self.state), "--keys", str(self.keys), *self.extra]
        self._log = open(self.log_path, "ab")  # a file, never a pipe: a full pipe blocks
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT)
        return self

    def client(self, **kw) -> Client:
        kw.setdefault("keys", KeyFiles(self.keys))
        return Client(self.endpoint, **kw).connect()

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"server exited: {self.log()}"
            with self.client() as c:
                try:
                    c.handshake(timeout_s=2.0)
                    return
                except Exception:
                    pass
        raise AssertionError(f"server not ready in {timeout_s} s: {self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def signal(self, sig: int) -> None:
        os.kill(self.proc.pid, sig)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        if self.proc is not None:
            self._log.close()


def make_keys(directory: Path, *clients: str) -> None:
    cmd = [sys.executable, "-m", "stabledreamer", "keys", str(directory)]
    for name in clients:
        cmd += ["--client", name]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


def wait_state(client: Client, job: str, states, timeout_s: float = 60.0) -> JobState:
    states = {states} if isinstance(states, str) else set(states)
    hit = client.wait_for(
        lambda e: (
            (isinstance(e, JobState) and e.job == job and e.state in states)
            or (isinstance(e, Error) and e.job == job)
        ),
        timeout_s,
    )
    assert hit is not None, f"{job}: no state in {states} within {timeout_s} s"
    assert isinstance(hit, JobState), f"{job}: {hit}"
    return hit


def reply_to(client: Client, request_id: str, timeout_s: float = 10.0):
    hit = client.wait_for(lambda e: getattr(e, "re", None) == request_id, timeout_s)
    assert hit is not None, f"no reply to {request_id} within {timeout_s} s"
    return hit
