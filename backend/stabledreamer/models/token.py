"""The hub token: stored owner-only on the backend, never logged, never echoed back.

Where a token comes from, first found wins: the caller (a CLI flag's file, the add-on over an
authenticated link), ``HF_TOKEN`` in the environment, the backend's token file
(``token_path()``: ``$STABLEDREAMER_HF_TOKEN_FILE``, else ``hf_token`` in the config folder that
holds the CURVE keys, e.g. ``~/.config/stabledreamer/hf_token``), then huggingface_hub's own
login (``hf auth login``). The file is written with mode 0600 in a 0700 folder (created with those
modes, so the token is never readable by others, not even for an instant), through a temporary
file and a rename. Functions here return the token or whether there is one; messages name the
file and the source, never the value (``describe``).
"""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

from .errors import ModelError

MAX_TOKEN_CHARS = 512


class TokenError(ModelError):
    code = "bad_field"


def token_path() -> Path:
    if os.environ.get("STABLEDREAMER_HF_TOKEN_FILE"):
        return Path(os.environ["STABLEDREAMER_HF_TOKEN_FILE"]).expanduser()
    from stabledreamer_protocol.keys import default_key_dir

    return default_key_dir().parent / "hf_token"


def check_token(token: str) -> str:
    """The token stripped, or ``TokenError`` (the message never contains it)."""
    t = (token or "").strip()
    if not t:
        raise TokenError("the hub token is empty")
    if len(t) > MAX_TOKEN_CHARS or any(c.isspace() or not c.isprintable() for c in t):
        raise TokenError(
            "that is not a hub token (one line of printable characters, no spaces; make one at "
            "https://huggingface.co/settings/tokens)"
        )
    return t


def save_token(token: str, path: str | os.PathLike | None = None) -> Path:
    """Store ``token`` owner-only (0600 file, 0700 folder); returns the file."""
    t = check_token(token)
    p = Path(path) if path else token_path()
    p.parent.mkdir(mode=0o700, parents=True, exist_ok=True)  # an existing folder is left as is
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(t + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    finally:
        if tmp.exists():
            tmp.unlink()
    return p


def clear_token(path: str | os.PathLike | None = None) -> bool:
    """Delete the stored token; True when there was one."""
    p = Path(path) if path else token_path()
    try:
        p.unlink()
        return True
    except FileNotFoundError:
        return False


def _read_file(p: Path) -> str | None:
    try:
        if sys.platform != "win32" and stat.S_IMODE(p.stat().st_mode) & 0o077:
            raise TokenError(
                f"{p} is readable by other users: `chmod 600 {p}` (or store the token again "
                "with `stabledreamer models token set`)"
            )
        t = p.read_text().strip()
        return t or None
    except FileNotFoundError:
        return None


def token_source(path: str | os.PathLike | None = None) -> tuple[str | None, str]:
    """(token, where it came from: ``HF_TOKEN`` | the file | ``hf auth login`` | ``none``)."""
    env = os.environ.get("HF_TOKEN", "").strip()
    if env:
        return env, "HF_TOKEN"
    p = Path(path) if path else token_path()
    t = _read_file(p)
    if t:
        return t, str(p)
    try:
        from huggingface_hub import get_token

        t = get_token()
    except Exception:  # noqa: BLE001 - its own config may be unreadable: then no token
        t = None
    return (t, "hf auth login") if t else (None, "none")


def load_token(path: str | os.PathLike | None = None) -> str | None:
    return token_source(path)[0]


def describe(path: str | os.PathLike | None = None) -> str:
    """One line for people: whether a token is set and where from, never its value."""
    t, where = token_source(path)
    return f"a hub token is set (from {where}; value not shown)" if t else "no hub token set"


def export_stored_token(path: str | os.PathLike | None = None) -> bool:
    """Put the stored token (``save_token``'s file) in ``HF_TOKEN`` for this process's model
    loads, unless ``HF_TOKEN`` is set already; True when it did. A gated repository (DeepFloyd IF)
    is checked against the hub even when its files are cached, and huggingface_hub reads only
    ``HF_TOKEN`` and its own login, not this file. The value is never printed."""
    if os.environ.get("HF_TOKEN", "").strip():
        return False
    token = _read_file(Path(path) if path else token_path())
    if not token:
        return False
    os.environ["HF_TOKEN"] = token
    return True
