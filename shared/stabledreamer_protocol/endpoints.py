"""Where the backend listens by default, and which endpoints stay on this machine."""

from __future__ import annotations

import ipaddress

DEFAULT_PORT = 5757
DEFAULT_ENDPOINT = f"tcp://127.0.0.1:{DEFAULT_PORT}"
"""The backend binds here unless told otherwise; the add-on connects here by default."""


def is_loopback(endpoint: str) -> bool:
    """True for ``ipc://``/``inproc://`` and ``tcp://`` on 127.0.0.0/8, ``::1`` or
    ``localhost``. Wildcards (``*``, ``0.0.0.0``) and interface names are not loopback."""
    scheme, _, rest = endpoint.partition("://")
    if scheme in ("ipc", "inproc"):
        return True
    if scheme != "tcp" or not rest:
        return False
    host = rest.rsplit(":", 1)[0] if not rest.startswith("[") else rest[1:].split("]", 1)[0]
    if ";" in host:  # "source;destination" form: judge the destination
        host = host.rsplit(";", 1)[1]
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
