"""Fixtures of the add-on tests (helpers in ``addon_helpers.py``)."""

from __future__ import annotations

import pytest
from addon_helpers import build_zip


@pytest.fixture(scope="session")
def addon_zip(tmp_path_factory):
    """The linux-x64 extension zip, built once per test session."""
    return build_zip(tmp_path_factory.mktemp("addon"))
