"""Start a local backend (``stabledreamer serve``) from Blender, detached so it outlives Blender.

The command comes from the add-on's preferences (for example
``/home/me/stabledreamer/.venv/bin/stabledreamer serve --sd-model /models/sd21``); ``--bind`` is
added when the command has none. The process runs in its own session (closing Blender does not
stop it, so a running job goes on; the "stop the backend when Blender quits" preference
terminates it at exit). Its output goes to ``backend.log`` in the add-on's user folder.
"""

from __future__ import annotations

import atexit
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

_started: list[subprocess.Popen] = []
_stop_at_exit = False


class BackendStartError(Exception):
    pass


def build_command(command: str, endpoint: str) -> list[str]:
    try:
        argv = shlex.split(command, posix=not sys.platform.startswith("win"))
    except ValueError as e:
        raise BackendStartError(f"The backend command is not valid ({e}).") from None
    if not argv:
        raise BackendStartError(
            "No backend command is set: give one in the add-on's preferences, e.g. "
            "'stabledreamer serve'."
        )
    if "--bind" not in argv and not any(a.startswith("--bind=") for a in argv):
        argv += ["--bind", endpoint]
    return argv


def start(command: str, endpoint: str, log_path: str | os.PathLike) -> subprocess.Popen:
    """Start the backend; raises :class:`BackendStartError` with what to do."""
    argv = build_command(command, endpoint)
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "ab")  # a file, never a pipe (a full pipe would block the backend)
    kw: dict = {"stdout": log, "stderr": subprocess.STDOUT, "stdin": subprocess.DEVNULL}
    if sys.platform.startswith("win"):
        kw["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP | subprocess.DETACHED_PROCESS
    else:
        kw["start_new_session"] = True
    try:
        proc = subprocess.Popen(argv, **kw)
    except OSError as e:
        raise BackendStartError(
            f"Cannot run {argv[0]!r}: {e.strerror or e}. Set the full path of the backend's "
            "'stabledreamer' program in the add-on's preferences."
        ) from None
    finally:
        log.close()
    _started.append(proc)
    return proc


def running() -> subprocess.Popen | None:
    """The newest backend this Blender started that is still alive."""
    for proc in reversed(_started):
        if proc.poll() is None:
            return proc
    return None


def exited_early() -> int | None:
    """Exit code of the newest started backend if it has already died (e.g. a bad command)."""
    if _started and _started[-1].poll() is not None:
        return _started[-1].returncode
    return None


def stop_all(timeout_s: float = 10.0) -> None:
    """Terminate the backends this Blender started (SIGTERM: they checkpoint and exit)."""
    for proc in _started:
        if proc.poll() is None:
            proc.terminate()
    deadline = time.monotonic() + timeout_s  # one deadline for all, not one each
    for proc in _started:
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
    _started.clear()


def stop_at_exit(enabled: bool) -> None:
    global _stop_at_exit
    _stop_at_exit = enabled


@atexit.register
def _at_exit() -> None:
    if _stop_at_exit:
        stop_all()
