"""The Ray worker's side: what runs inside the actor (no Ray import needed here).

The actor (``launcher.FarmWorker``) runs :func:`supervise`: it starts one worker process, as the
service starts a local one, and returns its exit code. The worker process (:func:`run_worker`)
connects back to the service (``relay.Rendezvous``), says who it is, and runs the very same
``worker.worker_main`` loop a local worker runs, on that connection; it watches its actor as a
local worker watches the service (it dies with it). It ends after its job or when its connection
closes; Ray ends the actor when its owner, the service, dies.

Shared state: the job's folders are paths under ``serve --state`` on the service's machine.
Before a job starts, :class:`CheckedConn` makes sure the job's folder exists on this node; when
it does not (the state folder is not shared, or mounted elsewhere) the job fails with a message
that says so, instead of training into a folder the service never sees.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
from multiprocessing import connection as mpc
from pathlib import Path

from .. import pipe

NOT_SHARED = (
    "the job's folder {path} does not exist on the Ray node {host}: `serve --state` must be a "
    "folder every Ray node (and the service) mounts at the same path (see docs/farm.md)"
)


class CheckedConn:
    """The worker's connection: sends one at a time (the job and the heartbeat thread share it)
    and a ``RunJob`` whose folder this node cannot see is failed here, never run."""

    def __init__(self, conn: mpc.Connection, exit=None, where: str = "") -> None:
        self._conn = conn
        self.where = where
        """Where the job runs, for its log (node, process ids)."""
        self._lock = threading.Lock()
        self._exit = exit or _exit
        """Called after a job is refused: the worker ends, as after any failed job."""

    def send(self, msg: object) -> None:
        with self._lock:
            self._conn.send(msg)

    def poll(self, timeout: float = 0.0) -> bool:
        return self._conn.poll(timeout)

    def recv(self):
        msg = self._conn.recv()
        if isinstance(msg, pipe.RunJob) and not Path(msg.spec.job_dir).is_dir():
            text = NOT_SHARED.format(path=msg.spec.job_dir, host=socket.gethostname())
            self.send(pipe.LogLine(logging.ERROR, text))
            self.send(pipe.JobFailed("job_failed", text))
            self._exit(0)
        if isinstance(msg, pipe.RunJob) and self.where:
            self.send(pipe.LogLine(logging.INFO, f"runs on {self.where}"))
        return msg


def supervise(address: tuple[str, int], authkey: bytes, token: str, node_id: str) -> int:
    """The actor's one task: start the worker process (``run_worker``) and wait for it; its exit
    code. The actor process itself never loads torch: it ends quickly and quietly once the
    service kills it, and a worker that dies (a crash, a kill) is a plain exit code here."""
    import multiprocessing as mp

    proc = mp.get_context("spawn").Process(
        target=run_worker,
        args=(address, authkey, token, node_id, os.getpid()),
        name="stabledreamer-ray-worker",
        daemon=True,
    )
    proc.start()
    proc.join()
    return proc.exitcode


def run_worker(
    address: tuple[str, int], authkey: bytes, token: str, node_id: str, actor_pid: int
) -> None:
    """The worker process: connect to the service and be a worker for it (``worker_main``, the
    local worker's loop; it ends with its actor, like a local worker with the service)."""
    from ..worker import worker_main
    from .relay import Hello, code_digest

    try:
        conn = mpc.Client(tuple(address), family="AF_INET", authkey=authkey)
        with socket.socket(fileno=os.dup(conn.fileno())) as sock:  # a silent peer is noticed
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        hello = Hello(token, code_digest(), node_id, socket.gethostname(), os.getpid(), actor_pid)
        conn.send(hello)
        where = f"Ray node {hello.host} ({node_id[:8]}), pid {hello.pid}, actor pid {actor_pid}"
        worker_main(CheckedConn(conn, where=where), actor_pid)
    except Exception as e:  # the service is unreachable or went away: nothing to report to
        print(f"stabledreamer Ray worker: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        _exit(1)
    _exit(0)


def _exit(code: int) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
