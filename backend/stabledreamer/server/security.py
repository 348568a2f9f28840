"""CURVE for the service socket, and the ``stabledreamer keys`` command's work.

Policy: CURVE is on by default, on loopback too (other local users can reach loopback): the
server and a client keypair are made on first run in the user's key folder
(``stabledreamer_protocol.keys.default_key_dir()``), so a local add-on using the same folder
connects with no setup. ``--no-curve`` turns it off, on loopback only; a non-loopback bind
without CURVE is refused.
"""

from __future__ import annotations

import os
from pathlib import Path

import zmq
from zmq.auth.thread import ThreadAuthenticator

from stabledreamer_protocol import ProtocolError, is_loopback
from stabledreamer_protocol.keys import (
    KeyFiles,
    apply_server_curve,
    authorize,
    create_keypair,
    ensure_keys,
    load_public,
)

from ..errors import StableDreamerError


class SecurityError(StableDreamerError):
    """The service cannot be started with these settings; the message says what to change."""


def check_bind(endpoint: str, curve: bool) -> None:
    if not curve and not is_loopback(endpoint):
        raise SecurityError(
            f"refusing to listen on {endpoint} without CURVE: anyone who can reach it could run "
            "jobs and read results; drop --no-curve (keys: stabledreamer keys DIR) or bind "
            "tcp://127.0.0.1:PORT"
        )


def enable_curve(
    context: zmq.Context, socket: zmq.Socket, key_dir: str | os.PathLike | None
) -> tuple[ThreadAuthenticator, KeyFiles]:
    """Make ``socket`` a CURVE server that admits only the public keys in ``KEYS/authorized``
    (a ZAP handler: a client with another key gets no connection at all). Call before bind."""
    if not zmq.has("curve"):
        raise SecurityError("this libzmq has no CURVE support; reinstall pyzmq")
    try:
        files = ensure_keys(key_dir)
        keys = [p for p in files.authorized.glob("*.key") if p.is_file()]
        if not keys:
            raise SecurityError(f"{files.authorized} holds no client public keys (*.key)")
        apply_server_curve(socket, files.server_secret)
    except ProtocolError as e:  # e.g. a secret key file others can read: one line, the fix
        raise SecurityError(f"{e.message} {e.hint}".strip()) from None
    except (OSError, ValueError) as e:
        if isinstance(e, SecurityError):
            raise
        raise SecurityError(f"the CURVE keys in {key_dir or 'the key folder'}: {e}") from None
    auth = ThreadAuthenticator(context)
    auth.start()
    auth.configure_curve(domain="*", location=str(files.authorized))
    return auth, files


def make_keys(directory: str | os.PathLike, clients: list[str]) -> list[str]:
    """The server keypair and the default client (``ensure_keys``), plus one authorised
    keypair per name in ``clients``; returns lines describing what is where."""
    files = ensure_keys(directory)
    lines = [
        f"server keypair:  {files.server_public} (give to clients), "
        f"{files.server_secret} (owner-only, stays here)",
        f"client keypair:  {files.client_public}, {files.client_secret} (authorised)",
    ]
    for name in clients:
        if name in ("server", "client") or not name.replace("-", "").replace("_", "").isalnum():
            raise SecurityError(
                f"client name {name!r}: use letters, digits, - and _ (not server or client)"
            )
        secret = Path(directory) / f"{name}.key_secret"
        public = Path(directory) / f"{name}.key"
        if not secret.exists():
            create_keypair(directory, name)
        load_public(public)
        authorize(files, public, name)
        lines.append(f"client {name}:  {public}, {secret} (authorised)")
    lines.append(f"authorised client keys: {files.authorized}/*.key (the server admits only these)")
    lines.append(
        "a remote client needs server.key and its own NAME.key_secret; start the server with "
        f"--keys {directory}"
    )
    return lines


def raise_fd_limit() -> int | None:
    """Raise this process's descriptor limit to the hard limit (desktops start at 256 or
    1,024; every connection and every worker pipe takes descriptors). Returns the new limit."""
    try:
        import resource
    except ImportError:  # Windows: no such limit
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
    if want > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        except (ValueError, OSError):  # macOS caps the soft limit below an infinite hard one
            return soft
    return max(want, soft)
