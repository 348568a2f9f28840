"""CURVE keys: creation with owner-only secret files, loading, and applying them to sockets.

Files use ZeroMQ's certificate format, so ``zmq.auth.load_certificate`` and
``ThreadAuthenticator.configure_curve(location=...)`` read them: ``NAME.key`` holds the public
key, ``NAME.key_secret`` the public and secret keys. Unlike ``zmq.auth.create_certificates``, the
secret file is created with mode 0o600 from the start (``os.open(..., O_EXCL, 0o600)``, then
``os.replace``), so it is never readable by others, not even for a moment.

Layout of a key folder (default: ``~/.config/stabledreamer/keys``, mode 0o700)::

    server.key  server.key_secret     the backend's keypair
    client.key  client.key_secret     this user's client keypair
    authorized/client.key             public keys the backend accepts (one file per client)
    operators/client.key              keys that may see and manage every client's jobs (since
                                      protocol 1.2; this user's own client key from the start)
"""

from __future__ import annotations

import datetime
import os
import stat
import sys
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth

from .errors import ErrorCode, ProtocolError

SECRET_MODE = 0o600
DIR_MODE = 0o700
AUTHORIZED_DIR = "authorized"
OPERATORS_DIR = "operators"

_BANNER = """#   ****  Generated on {date} by stabledreamer_protocol  ****
#   ZeroMQ CURVE {kind} Certificate
{warning}
metadata
curve
    public-key = "{public}"
"""


def default_key_dir() -> Path:
    """``$STABLEDREAMER_KEYS``, else the user's config folder: ``%APPDATA%\\stabledreamer\\keys``
    on Windows, ``$XDG_CONFIG_HOME`` (or ``~/.config``) ``/stabledreamer/keys`` elsewhere."""
    if os.environ.get("STABLEDREAMER_KEYS"):
        return Path(os.environ["STABLEDREAMER_KEYS"])
    if sys.platform == "win32":
        base = Path(os.environ.get("APPDATA", Path.home() / "AppData" / "Roaming"))
    else:
        base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "stabledreamer" / "keys"


def _write(path: Path, text: str, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)  # in case the umask took bits away we want (never adds any)
        os.replace(tmp, path)
    except BaseException:
        if tmp.exists():
            tmp.unlink()
        raise


def create_keypair(directory: str | os.PathLike, name: str) -> tuple[Path, Path]:
    """Make a CURVE keypair: ``NAME.key`` (public, 0o644) and ``NAME.key_secret`` (0o600).
    Returns ``(public_path, secret_path)``. Overwrites an existing pair of that name."""
    if not zmq.has("curve"):
        raise RuntimeError("this libzmq has no CURVE support")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    public, secret = zmq.curve_keypair()
    date = datetime.datetime.now().isoformat(timespec="seconds")
    pub_text = _BANNER.format(date=date, kind="Public", warning="", public=public.decode())
    sec_text = (
        _BANNER.format(
            date=date,
            kind="**Secret**",
            warning="#   DO NOT PROVIDE THIS FILE TO OTHER USERS nor change its permissions.\n",
            public=public.decode(),
        )
        + f'    secret-key = "{secret.decode()}"\n'
    )
    public_path = directory / f"{name}.key"
    secret_path = directory / f"{name}.key_secret"
    _write(secret_path, sec_text, SECRET_MODE)
    _write(public_path, pub_text, 0o644)
    return public_path, secret_path


def check_secret_file(path: str | os.PathLike) -> None:
    """Refuse a secret key file that group or others can read or write (POSIX only)."""
    if os.name != "posix":
        return
    mode = stat.S_IMODE(os.stat(path).st_mode)
    if mode & 0o077:
        raise ProtocolError(
            ErrorCode.INSECURE_KEY_FILE,
            f"secret key file {path} has mode {mode:o}; other users could read it",
            f"Run: chmod 600 {path}",
        )


def load_public(path: str | os.PathLike) -> bytes:
    public, _ = zmq.auth.load_certificate(os.fspath(path))
    return public


def load_secret(path: str | os.PathLike) -> tuple[bytes, bytes]:
    """``(public, secret)`` from a ``.key_secret`` file, after checking its permissions."""
    check_secret_file(path)
    public, secret = zmq.auth.load_certificate(os.fspath(path))
    if not secret:
        raise ValueError(f"{path} holds no secret key")
    return public, secret


@dataclass(frozen=True)
class KeyFiles:
    """Paths of one key folder (see the module docstring)."""

    directory: Path

    @property
    def server_public(self) -> Path:
        return self.directory / "server.key"

    @property
    def server_secret(self) -> Path:
        return self.directory / "server.key_secret"

    @property
    def client_public(self) -> Path:
        return self.directory / "client.key"

    @property
    def client_secret(self) -> Path:
        return self.directory / "client.key_secret"

    @property
    def authorized(self) -> Path:
        return self.directory / AUTHORIZED_DIR

    @property
    def operators(self) -> Path:
        return self.directory / OPERATORS_DIR


def ensure_keys(directory: str | os.PathLike | None = None) -> KeyFiles:
    """Create the server and client keypairs on first run (and authorise the client), so CURVE
    on loopback costs the user nothing. Existing keys are kept."""
    files = KeyFiles(Path(directory) if directory is not None else default_key_dir())
    files.directory.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    if os.name == "posix":
        os.chmod(files.directory, DIR_MODE)
    for name, secret in (("server", files.server_secret), ("client", files.client_secret)):
        if not secret.exists():
            create_keypair(files.directory, name)
    files.authorized.mkdir(exist_ok=True, mode=DIR_MODE)
    if os.name == "posix":  # whoever can write here can let themselves in: owner-only, always
        os.chmod(files.authorized, DIR_MODE)
        for key in files.authorized.iterdir():
            if key.is_file() and not key.is_symlink() and key.stat().st_mode & 0o022:
                os.chmod(key, key.stat().st_mode & ~0o022)
    authorized = files.authorized / "client.key"
    if not authorized.exists():
        authorized.write_bytes(files.client_public.read_bytes())
    if not files.operators.exists():  # the local user runs the backend: their key operates it
        files.operators.mkdir(mode=DIR_MODE)
        (files.operators / "client.key").write_bytes(files.client_public.read_bytes())
    if os.name == "posix":
        os.chmod(files.operators, DIR_MODE)
    return files


def operator_keys(files: KeyFiles) -> set[str]:
    """The Z85 public keys in ``operators/`` (what the ZAP handler reports as a client's
    User-Id), ignoring files that are not key files."""
    out = set()
    for path in sorted(files.operators.glob("*.key")) if files.operators.is_dir() else []:
        try:
            out.add(load_public(path).decode("ascii"))
        except (OSError, ValueError, UnicodeDecodeError):
            continue
    return out


def authorize(files: KeyFiles, public_key_file: str | os.PathLike, name: str) -> Path:
    """Let another client in: copy its public key file into ``authorized/NAME.key``."""
    load_public(public_key_file)  # refuse anything that is not a key file
    target = files.authorized / f"{name}.key"
    target.write_bytes(Path(public_key_file).read_bytes())
    return target


def apply_server_curve(socket: zmq.Socket, server_secret: str | os.PathLike) -> None:
    """Make ``socket`` a CURVE server. Clients are then checked by a ZAP handler, e.g.
    ``ThreadAuthenticator(ctx).configure_curve(domain="*", location=files.authorized)``;
    without one, any client that knows the server's public key gets in. Call before bind."""
    public, secret = load_secret(server_secret)
    socket.curve_secretkey = secret
    socket.curve_publickey = public
    socket.curve_server = True


def apply_client_curve(
    socket: zmq.Socket, client_secret: str | os.PathLike, server_public: str | os.PathLike
) -> None:
    """Make ``socket`` a CURVE client of the server whose public key file is given. Call
    before connect."""
    public, secret = load_secret(client_secret)
    socket.curve_secretkey = secret
    socket.curve_publickey = public
    socket.curve_serverkey = load_public(server_public)
