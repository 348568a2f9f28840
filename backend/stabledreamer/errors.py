"""One root for every error a user can act on.

A :class:`StableDreamerError` carries a message that says what went wrong and what to do, and the
protocol error code it travels under (``stabledreamer_protocol.ErrorCode``). Only these count as
user errors: the CLI prints them as one line (exit code 2) and the service's worker sends them as
``job_failed`` (or their own code). Anything else is a bug, reported as ``internal`` with a
traceback. Parts define their own subclasses (``GuidanceError``, ``MeshError``, ...).
"""

from __future__ import annotations


class StableDreamerError(Exception):
    """A failure the user can fix; ``code`` is its protocol error code."""

    code: str = "job_failed"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class ConfigError(StableDreamerError):
    """A preset, an option or a setting the run cannot use; the message names the key and the
    accepted values."""

    code = "bad_override"


class InputError(StableDreamerError):
    """An input file or folder the run cannot use (a missing mesh, not a run folder, ...)."""
