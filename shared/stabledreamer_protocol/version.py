"""Protocol and package versions.

The wire carries only the protocol's *major* version (header field ``v``). Peers with the same
major version interoperate; a minor bump only adds optional body fields, new error codes or new
feature names, which older peers ignore. A new message type or any change to an existing field's
meaning is a major bump, except new commands (and the events that answer them) announced by a
feature name in ``hello``: a client sends them only to a backend that lists the feature, and a
backend sends their events only to a client that sent them (since 1.3: ``models``). ``hello``
exchanges the full ``"major.minor"`` string for diagnostics.
"""

from __future__ import annotations

PROTOCOL_MAJOR = 1
PROTOCOL_MINOR = 5
PROTOCOL_VERSION = f"{PROTOCOL_MAJOR}.{PROTOCOL_MINOR}"
"""The string sent in ``hello`` bodies."""

__version__ = "0.1.0"
"""Version of the ``stabledreamer-protocol`` distribution (not of the wire protocol)."""
