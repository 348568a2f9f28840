"""Checkpoints under a bad disk: every kind of damage to the newest falls back to the previous;
damage to both fails with one clear error; a failed write leaves both as they were."""

from __future__ import annotations

import itertools
import os

import pytest
import torch

from stabledreamer.atomic import DiskFullError
from stabledreamer.errors import InputError
from stabledreamer.runs import checkpoint as C


def state(step: int) -> dict:
    g = torch.Generator().manual_seed(step)
    return {"step": step, "params": {"means": torch.randn(200, 3, generator=g)}}


def damage(path, how: str) -> None:
    data = path.read_bytes()
    if how == "empty":
        path.write_bytes(b"")
    elif how == "one_byte":
        path.write_bytes(data[:1])
    elif how == "half":
        path.write_bytes(data[: len(data) // 2])
    elif how == "last_byte_missing":
        path.write_bytes(data[:-1])
    elif how == "garbage":
        path.write_bytes(os.urandom(len(data)))
    elif how == "flipped_byte":
        i = len(data) // 2
        path.write_bytes(data[:i] + bytes([data[i] ^ 0x40]) + data[i + 1 :])
    elif how == "sidecar_garbage":
        path.with_suffix(".json").write_text("{nope")
    elif how == "not_a_dict":
        torch.save([1, 2], path)
        path.with_suffix(".json").unlink()
    else:
        raise AssertionError(how)


DAMAGE = ["empty", "one_byte", "half", "last_byte_missing", "garbage", "flipped_byte",
          "sidecar_garbage", "not_a_dict"]  # fmt: skip


def two_saves(run_dir):
    C.save_checkpoint(run_dir, state(1))
    C.save_checkpoint(run_dir, state(2))
    folder = run_dir / "checkpoints"
    return folder / "last.pt", folder / "previous.pt"


def test_the_newest_good_one_is_read(tmp_path):
    last, previous = two_saves(tmp_path)
    assert C.load_checkpoint(tmp_path)["step"] == 2
    assert torch.load(previous, weights_only=True)["step"] == 1


@pytest.mark.parametrize("how", DAMAGE)
def test_a_damaged_newest_falls_back_to_the_previous(tmp_path, how):
    last, _ = two_saves(tmp_path)
    damage(last, how)
    ck = C.load_checkpoint(tmp_path)
    assert ck["step"] == 1 and torch.equal(ck["params"]["means"], state(1)["params"]["means"])


@pytest.mark.parametrize(
    ("a", "b"), list(itertools.product(DAMAGE, ["empty", "garbage", "flipped_byte", "half"]))
)
def test_both_damaged_is_one_clear_error(tmp_path, a, b):
    last, previous = two_saves(tmp_path)
    damage(last, a)
    damage(previous, b)
    with pytest.raises(C.CheckpointError) as e:
        C.load_checkpoint(tmp_path)
    assert "last.pt" in str(e.value) and "previous.pt" in str(e.value)
    assert e.value.code == "job_failed"


def test_a_missing_newest_after_a_crash_mid_rotation(tmp_path):
    last, _ = two_saves(tmp_path)
    last.unlink()
    assert C.has_checkpoint(tmp_path) and C.load_checkpoint(tmp_path)["step"] == 1


@pytest.mark.parametrize("at", range(5))
def test_killed_at_any_point_of_the_rotation_a_checkpoint_is_left(tmp_path, monkeypatch, at):
    """A SIGKILL between any two renames of ``save_checkpoint`` (seen when a node was lost)."""
    two_saves(tmp_path)
    calls = {"n": 0}
    real = os.replace

    def dies(src, dst):
        if calls["n"] == at:
            raise KeyboardInterrupt  # stands for the kill: nothing after it runs
        calls["n"] += 1
        real(src, dst)

    monkeypatch.setattr(C.os, "replace", dies)
    with pytest.raises(KeyboardInterrupt):
        C.save_checkpoint(tmp_path, state(3))
    monkeypatch.undo()
    # os.replace calls: 0 stages the new one, 1 moves last.pt to previous.pt, 2 its sidecar,
    # 3 puts the new one in place, 4 writes its sidecar.
    assert C.load_checkpoint(tmp_path)["step"] == (3 if at == 4 else 2)


def test_a_checkpoint_without_sidecar_still_loads(tmp_path):
    last, _ = two_saves(tmp_path)
    last.with_suffix(".json").unlink()  # an older release's checkpoint
    assert C.load_checkpoint(tmp_path)["step"] == 2


def test_a_failed_write_keeps_both(tmp_path, monkeypatch):
    two_saves(tmp_path)

    def full_disk(obj, f, *a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(DiskFullError):
        C.save_checkpoint(tmp_path, state(3))
    monkeypatch.undo()
    assert C.load_checkpoint(tmp_path)["step"] == 2
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "last.json", "last.pt", "previous.json", "previous.pt"
    ]  # fmt: skip


def test_no_checkpoint_at_all(tmp_path):
    assert not C.has_checkpoint(tmp_path)
    with pytest.raises(InputError):
        C.load_checkpoint(tmp_path)
