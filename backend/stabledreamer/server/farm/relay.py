"""The service's end of its Ray workers' connections (no Ray here).

Each Ray worker connects back to the service over TCP with ``multiprocessing.connection``: one
:class:`Rendezvous` listens (``serve --ray-listen``, loopback by default), every connection must
prove it knows the service's random secret (the HMAC challenge of ``multiprocessing``, both
ways) within ``HANDSHAKE_S`` and then name the one-time token of the worker it is. Its messages
are the same pickled ``pipe`` dataclasses a local worker sends over its pipe.

The pool gets, for every worker, the service end of an ordinary local ``Pipe`` (a
:class:`Link`) at once, before the actor is even scheduled, so it can poll it, tell it
``RunJob`` and see it close exactly as for a local process; a thread relays the bytes between
that pipe and the TCP connection when it arrives. When the worker's connection ends, the relay
waits (at most ``VERDICT_WAIT_S``) for Ray's word on why (the process died, its node was lost)
before it closes the pool's end, so the pool reaps a worker whose exit is already explained.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import socket
import threading
from dataclasses import dataclass
from multiprocessing import connection as mpc
from pathlib import Path

log = logging.getLogger("stabledreamer.farm")

HANDSHAKE_S = 10.0
"""A connection that has not authenticated and named its worker by then is dropped."""
VERDICT_WAIT_S = float(os.environ.get("STABLEDREAMER_RAY_VERDICT_S", "5"))
"""After a worker's connection ends, how long its relay waits for Ray to say why before it
closes the pool's end anyway (the pool then kills what is left of the actor). A node Ray has
not declared dead by then counts as the job's crash: raise it (``STABLEDREAMER_RAY_VERDICT_S``)
where Ray's node health checks take longer (docs/farm.md)."""


def code_digest() -> str:
    """A digest of the messages' code (``pipe.py``): a worker whose installed stabledreamer differs
    from the service's is refused rather than misread."""
    from .. import pipe

    return hashlib.sha256(Path(pipe.__file__).read_bytes()).hexdigest()[:16]


@dataclass(frozen=True)
class Hello:
    """The first message of a worker on its connection."""

    token: str
    digest: str
    node_id: str
    host: str
    pid: int
    """The worker process's."""
    actor_pid: int
    """Its actor's (the Ray worker process)."""


class Link:
    """One worker's two pipes: ``local`` (given to the pool) and the relay's end of it."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.local, self._inner = mpc.Pipe(duplex=True)
        self.hello: Hello | None = None
        self.connected = threading.Event()
        self.remote_closed = threading.Event()
        self.verdict = threading.Event()
        """Set by whoever learns why the worker ended (``launcher.ActorProcess``)."""
        self._remote: mpc.Connection | None = None
        self._lock = threading.Lock()
        self._closed = False

    def attach(self, remote: mpc.Connection, hello: Hello) -> None:
        with self._lock:
            if self._closed:
                remote.close()
                return
            self._remote, self.hello = remote, hello
        self.connected.set()
        threading.Thread(
            target=self._pump, name=f"farm-relay-{self.token[:6]}", daemon=True
        ).start()

    def close(self) -> None:
        """End both sides (the pool then reads EOF, the worker too)."""
        with self._lock:
            self._closed = True
            remote = self._remote
        if remote is not None:
            _shutdown(remote)
        _shutdown(self._inner)

    def _pump(self) -> None:
        remote, inner = self._remote, self._inner
        pool_gone = False
        try:
            while True:
                for c in mpc.wait([remote, inner], timeout=1.0):
                    try:
                        data = c.recv_bytes()
                    except (EOFError, OSError):
                        pool_gone = c is inner
                        raise
                    (inner if c is remote else remote).send_bytes(data)
                if self._closed:
                    return
        except (EOFError, OSError, ValueError):
            pass
        finally:
            self.remote_closed.set()
            _shutdown(remote)
            if not pool_gone:  # the worker went: let Ray say why before the pool reaps it
                self.verdict.wait(VERDICT_WAIT_S)
            _shutdown(inner)


def _shutdown(c: mpc.Connection) -> None:
    """Close a socket connection so that a thread blocked reading it wakes up at once."""
    try:
        fd = c.fileno()
    except (OSError, ValueError):
        return
    try:
        with socket.socket(fileno=os.dup(fd)) as s:
            s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    c.close()


class Rendezvous:
    """Listens for the service's Ray workers and hands each connection to its :class:`Link`."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.authkey = secrets.token_bytes(32)
        self.digest = code_digest()
        self._listener = mpc.Listener((host, port), family="AF_INET")  # challenge: per thread
        self.address: tuple[str, int] = self._listener.address
        self._links: dict[str, Link] = {}
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, name="farm-listener", daemon=True).start()

    def expect(self) -> Link:
        """A link for a worker about to start; its token goes to the worker."""
        link = Link(secrets.token_hex(16))
        with self._lock:
            self._links[link.token] = link
        return link

    def forget(self, link: Link) -> None:
        """A worker that will never connect (its actor ended first): drop its link."""
        with self._lock:
            self._links.pop(link.token, None)
        link.close()

    def close(self) -> None:
        self._closed = True
        try:
            self._listener.close()
        except OSError:
            pass
        with self._lock:
            links, self._links = list(self._links.values()), {}
        for link in links:
            link.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                c = self._listener.accept()
            except OSError:
                if self._closed:
                    return
                continue
            threading.Thread(target=self._greet, args=(c,), daemon=True).start()

    def _greet(self, c: mpc.Connection) -> None:
        """Authenticate a connection and attach it to its link (or drop it), within
        ``HANDSHAKE_S``: a peer that says nothing cannot hold a thread for long."""
        timer = threading.Timer(HANDSHAKE_S, _shutdown, args=(c,))
        timer.start()
        try:
            mpc.deliver_challenge(c, self.authkey)
            mpc.answer_challenge(c, self.authkey)
            hello = c.recv()
        except (OSError, EOFError, mpc.AuthenticationError, ValueError) as e:
            log.warning("a connection to the Ray worker listener was refused (%s)", e)
            c.close()
            return
        except Exception as e:  # an authenticated peer sent something we cannot read
            log.warning("a Ray worker sent an unreadable greeting (%s)", e)
            c.close()
            return
        finally:
            timer.cancel()
        with self._lock:  # a token is good for one connection
            link = self._links.pop(getattr(hello, "token", None), None)
        if not isinstance(hello, Hello) or link is None:
            log.warning("a Ray worker named no worker this service started; dropped")
            c.close()
            return
        if hello.digest != self.digest:
            log.error(
                "the Ray worker on %s runs a different stabledreamer (messages %s, the service's "
                "%s): install the same version on every node; it is dropped",
                hello.host,
                hello.digest,
                self.digest,
            )
            c.close()
            return
        log.info("Ray worker connected from %s (node %s, pid %d, actor pid %d)", hello.host,
                 hello.node_id[:8], hello.pid, hello.actor_pid)  # fmt: skip
        link.attach(c, hello)
