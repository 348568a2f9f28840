"""Fixtures of the add-on tests (helpers in ``addon_helpers.py``)."""

from __future__ import annotations

import importlib.util

import pytest
from addon_helpers import build_zip

collect_ignore: list[str] = []
if importlib.util.find_spec("bpy") is None:  # pragma: no cover - bpy is in the lock file
    collect_ignore = ["test_addon.py", "test_addon_backend.py"]


@pytest.fixture(scope="session")
def addon_zip(tmp_path_factory):
    """The linux-x64 extension zip, built once per test session."""
    return build_zip(tmp_path_factory.mktemp("addon"))
