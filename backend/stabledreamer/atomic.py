"""Atomic file writes: temp file in the same folder, fsync, os.replace.

A reader (or a resumed run) never sees half a file, and a crash leaves the old file intact.
A write that fails because the disk is full raises :class:`DiskFullError`, naming the folder, the
space left and the space needed, and leaves the old file (and every other) as it was.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import StableDreamerError

LOW_SPACE_BYTES = 16 * 2**20
"""A failed write with less than this left on its filesystem is a full disk. When a disk fills,
the free space at the failure is about 0 (measured on a full 8 MiB tmpfs: torch.save's writer
fails with no errno, 0 bytes free); 16 MiB leaves room for reserved blocks and other writers."""


class DiskFullError(StableDreamerError):
    """A write failed because its disk is full; ``needed`` is the bytes it wanted (0: unknown)."""

    code = "disk_full"

    def __init__(self, message: str, *, folder: Path, free: int, needed: int = 0) -> None:
        super().__init__(message)
        self.folder, self.free, self.needed = folder, free, needed


def free_bytes(folder: str | os.PathLike) -> int:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return 0


def _out_of_space(exc: BaseException) -> bool:
    seen = 0
    e: BaseException | None = exc
    while e is not None and seen < 10:
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        e, seen = e.__cause__ or e.__context__, seen + 1
    return False


def disk_full(
    exc: BaseException, path: Path, written: int, needed: int = 0
) -> DiskFullError | None:
    """The :class:`DiskFullError` that ``exc`` (raised writing ``path``) means, or None when the
    disk was not the cause."""
    folder = path.parent
    free = free_bytes(folder)
    if not (_out_of_space(exc) or free < LOW_SPACE_BYTES):
        return None
    needed = max(needed, written + 1)
    return DiskFullError(
        f"disk full: writing {path.name} in {folder} needs about {_mb(needed)} and "
        f"{_mb(free)} is free. Free space there (or delete old jobs); the last good files are "
        "kept.",
        folder=folder,
        free=free,
        needed=needed,
    )


def _mb(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, needed: int = 0) -> Iterator[Path]:
    """Yield a temporary path; on success it is fsynced and renamed onto ``path``. A failure
    on a full disk raises :class:`DiskFullError` (``needed``: the expected size, when known)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise (disk_full(e, path, 0, needed) or e) from e
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; results get the usual permissions
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
        _fsync_dir(path.parent)
    except (OSError, RuntimeError) as e:  # torch's writer raises RuntimeError, with no errno
        written = tmp_path.stat().st_size if tmp_path.exists() else 0
        full = disk_full(e, path, written, needed)
        if full is None:
            raise
        raise full from e
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()  # read once at import: os.umask is process-wide and not thread-safe


def write_json(path: str | os.PathLike, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # not supported on some platforms (Windows)
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
