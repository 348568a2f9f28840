"""Shared fixtures of the protocol tests. Makes ``shared/`` importable without PYTHONPATH."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import zmq

SHARED = Path(__file__).resolve().parents[2] / "shared"
if str(SHARED) not in sys.path:
    sys.path.insert(0, str(SHARED))


@pytest.fixture
def ctx():
    """A private context; the test fails if it leaves a socket open."""
    context = zmq.Context()
    yield context
    leaked = [s for s in list(context._sockets) if not s.closed]
    for s in leaked:
        s.close(0)
    context.term()
    assert not leaked, f"{len(leaked)} socket(s) left open"
