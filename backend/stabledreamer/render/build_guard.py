"""Run-time native builds that a killed process cannot wedge (gsplat's CUDA kernels).

``torch.utils.cpp_extension`` serialises builds with a ``<build_dir>/lock`` file created with
``O_CREAT | O_EXCL``: it holds no process id, and a waiter loops while it exists, with no
timeout. A builder killed midway (SIGKILL, a closed laptop lid) leaves it behind, and every later
build of that extension waits forever with no message.

``guarded_build`` serialises builds with an OS lock instead, on ``<build_dir>.guard`` next to the
build folder (outside it: gsplat may delete the folder). The kernel releases that lock when its
holder dies, however it dies, so a waiter either gets it or, past ``timeout_s``, fails with a
:class:`BuildLockTimeout` that names the holder. While the guard is held no other guarded build
runs, so a ``<build_dir>/lock`` found then is stale by construction: it is removed, with a
warning that says so, before ``build_fn`` runs. Every build of a folder must go through the guard
for that to hold (builds that bypass it are not serialised with guarded ones).
"""

from __future__ import annotations

import contextlib
import os
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from ..errors import StableDreamerError

T = TypeVar("T")
TORCH_LOCK = "lock"  # torch.utils.file_baton.FileBaton's file in the build folder
POLL_S = 0.5  # how often a waiter retries the guard (latency only)


class BuildLockTimeout(StableDreamerError):
    """Another process held the build guard for longer than the timeout."""


def guarded_build(build_dir: str | os.PathLike, build_fn: Callable[[], T], timeout_s: float,
                  what: str, notify: Callable[[str], None] | None = None) -> T:  # fmt: skip
    """``build_fn()`` while holding the guard of ``build_dir``; its result.

    Waits up to ``timeout_s`` seconds for a build of the same folder in another process, then
    raises :class:`BuildLockTimeout`. ``what`` names the build in messages (e.g. "gsplat CUDA
    kernels"). ``notify`` receives what happened (waiting for another build, a stale lock
    removed), for a progress line or a job log; by default it is a ``RuntimeWarning``.
    """
    with build_guard(build_dir, timeout_s, what, notify):
        return build_fn()


def _warn(text: str) -> None:
    warnings.warn(text, RuntimeWarning, stacklevel=5)


@contextlib.contextmanager
def build_guard(build_dir: str | os.PathLike, timeout_s: float, what: str,
                notify: Callable[[str], None] | None = None) -> Iterator[Path]:  # fmt: skip
    """Hold the guard of ``build_dir`` (see the module docstring); yields the guard's path."""
    notify = notify or _warn
    build_dir = Path(build_dir)
    build_dir.parent.mkdir(parents=True, exist_ok=True)
    guard = build_dir.with_name(build_dir.name + ".guard")
    fd = os.open(guard, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        _acquire(fd, guard, timeout_s, what, notify)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {time.time():.0f}\n".encode())
        stale = build_dir / TORCH_LOCK
        if stale.exists():
            stale.unlink(missing_ok=True)
            notify(
                f"{what}: removed {stale}, a lock file left by an earlier build that was killed "
                "midway; building again"
            )
        yield guard
    finally:
        os.close(fd)  # releases the lock (the kernel also releases it when the process dies)


def _acquire(fd: int, guard: Path, timeout_s: float, what: str,
             notify: Callable[[str], None]) -> None:  # fmt: skip
    deadline = time.monotonic() + timeout_s
    warned = False
    while not _try_lock(fd):
        if time.monotonic() >= deadline:
            raise BuildLockTimeout(
                f"{what}: another build of it has held {guard} for over {timeout_s:.0f} s "
                f"({_holder(guard)}). Let it finish and retry, or stop that process; a killed "
                "build releases the lock by itself."
            )
        if not warned:
            warned = True
            notify(
                f"{what}: waiting up to {timeout_s:.0f} s for another build to finish "
                f"({_holder(guard)})"
            )
        time.sleep(min(POLL_S, max(0.0, deadline - time.monotonic())))


def _holder(guard: Path) -> str:
    """The holder's process id and start time as it wrote them, for messages."""
    try:
        pid, started = guard.read_text().split()[:2]
        since = time.strftime("%H:%M:%S", time.localtime(float(started)))
        return f"held by process {int(pid)} since {since}"
    except (OSError, ValueError):
        return "holder unknown"


try:
    import fcntl

    def _try_lock(fd: int) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

except ImportError:  # Windows: a byte-range lock, also released when the process dies
    import msvcrt

    def _try_lock(fd: int) -> bool:
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
