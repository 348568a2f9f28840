"""What a job's exception is sent as: user errors with their code, OOM, anything else internal."""

from __future__ import annotations

import pytest

from stabledreamer.errors import StableDreamerError
from stabledreamer.server.worker import failure


class FakeOOM(RuntimeError):
    pass


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (StableDreamerError("fix it"), "job_failed"),
        (StableDreamerError("bad", code="bad_override"), "bad_override"),
        (FakeOOM("CUDA out of memory\nmore"), "out_of_memory"),
        (ValueError("a bug"), "internal"),
        (FileNotFoundError("x"), "internal"),
        (KeyError("k"), "internal"),
    ],
)
def test_failure_codes(exc, code):
    failed = failure(exc, FakeOOM, (StableDreamerError,))
    assert failed.code == code
    if code == "internal":
        assert failed.message.startswith(type(exc).__name__)
    if code == "out_of_memory":
        assert "more" not in failed.message
