"""The farm's pieces that need no Ray (``server/farm``): the service's listener lets in only
workers that know its secret and name a worker it started, relays their messages both ways
through an ordinary pipe, and a worker that cannot see the job's folder fails the job clearly."""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
import threading
from multiprocessing import connection as mpc
from pathlib import Path

import pytest

from stabledreamer.errors import ConfigError
from stabledreamer.server import pipe
from stabledreamer.server.farm import FarmConfig, require_ray
from stabledreamer.server.farm.actor import CheckedConn
from stabledreamer.server.farm.relay import Hello, Rendezvous, code_digest


def hello(token: str, digest: str | None = None) -> Hello:
    return Hello(token, digest or code_digest(), "node0", "host", 1, 2)


def test_a_worker_with_the_secret_and_its_token_is_relayed_both_ways():
    r = Rendezvous()
    try:
        link = r.expect()
        remote = mpc.Client(r.address, family="AF_INET", authkey=r.authkey)
        remote.send(hello(link.token))
        assert link.connected.wait(10) and link.hello.pid == 1
        remote.send(pipe.WorkerReady("cpu"))
        assert link.local.poll(10) and link.local.recv() == pipe.WorkerReady("cpu")
        link.local.send(pipe.CancelJob())
        assert remote.poll(10) and remote.recv() == pipe.CancelJob()
        # The worker goes; once Ray said why (here: at once), the pool's end reads EOF.
        remote.close()
        assert link.remote_closed.wait(10)
        link.verdict.set()
        assert link.local.poll(10)
        with pytest.raises(EOFError):
            link.local.recv()
    finally:
        r.close()


@pytest.mark.parametrize("how", ["wrong secret", "unknown token", "other code"])
def test_strangers_are_dropped(how):
    r = Rendezvous()
    try:
        link = r.expect()
        if how == "wrong secret":
            with pytest.raises((mpc.AuthenticationError, EOFError, OSError)):
                c = mpc.Client(r.address, family="AF_INET", authkey=b"guess" * 8)
                c.send(hello(link.token))
                c.recv()
        else:
            c = mpc.Client(r.address, family="AF_INET", authkey=r.authkey)
            c.send(hello("nope" if how == "unknown token" else link.token, digest="x" * 16))
            assert c.poll(10)
            with pytest.raises((EOFError, OSError)):
                c.recv()  # dropped: closed without a word
        assert not link.connected.is_set()
    finally:
        r.close()


def test_a_silent_connection_is_dropped_after_the_handshake_limit(monkeypatch):
    from stabledreamer.server.farm import relay

    monkeypatch.setattr(relay, "HANDSHAKE_S", 0.5)
    r = Rendezvous()
    try:
        import socket

        with socket.create_connection(r.address) as s:
            s.settimeout(10)
            data = s.recv(1024)  # the challenge
            assert data
            while s.recv(1024):  # then nothing: closed by the listener
                pass
    finally:
        r.close()


def test_a_job_whose_folder_this_node_cannot_see_fails_clearly(tmp_path):
    a, b = mpc.Pipe()
    exited = threading.Event()
    conn = CheckedConn(b, exit=lambda code: exited.set())
    spec = pipe.JobSpec("j1", str(tmp_path / "absent"), str(tmp_path / "absent" / "run"),
                        "demo", "smoke", {}, 0)  # fmt: skip
    a.send(pipe.RunJob(spec))
    conn.recv()
    assert exited.is_set()
    log, failed = a.recv(), a.recv()
    assert isinstance(failed, pipe.JobFailed) and failed.code == "job_failed"
    assert "does not exist on the Ray node" in failed.message and "docs/farm.md" in failed.message
    assert isinstance(log, pipe.LogLine)
    # A folder it can see: the job goes through untouched.
    (tmp_path / "here").mkdir()
    ok = pipe.RunJob(pipe.JobSpec("j2", str(tmp_path / "here"), "", "demo", "smoke", {}, 0))
    a.send(ok)
    assert conn.recv() == ok


def test_without_ray_serve_says_how_to_install_it(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a)
    )
    with pytest.raises(ConfigError, match=r"pip install '\.\[farm\]'"):
        require_ray()


@pytest.mark.parametrize(
    "kw", [{"address": " "}, {"gpus_per_job": -1}, {"listen": "host"}, {"listen": "h:99999"}]
)
def test_bad_settings_are_refused(kw):
    with pytest.raises(ConfigError):
        FarmConfig(**kw)


def test_ray_is_imported_only_by_the_launcher_and_only_when_asked_for():
    backend = Path(__file__).resolve().parents[2] / "backend" / "stabledreamer"
    importers = set()
    for path in backend.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            names += [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            if any(n == "ray" or n.startswith("ray.") for n in names):
                importers.add(path.relative_to(backend).as_posix())
    assert importers == {"server/farm/launcher.py"}
    code = (
        "import sys, stabledreamer.cli, stabledreamer.server.service; print('ray' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False", out.stderr
