"""A download running in a thread, for a service that must keep answering while it runs.

``BackgroundDownload(set_id, ...).start()`` runs ``download.download_set`` in a daemon thread;
the service's loop polls ``state()`` (a JSON-able dict: ``running`` | ``done`` | ``failed`` |
``cancelled``, the last ``DownloadProgress``, and for a failure its wire code, one-line
message and, for a gated repository, the ``page`` where its licence is accepted) and may
``cancel()``. ``Downloads`` keeps at most one download per set (asking again
while one runs returns it; a finished one is replaced). Nothing here touches the wire.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from .download import DownloadProgress, download_set
from .sets import get_set

RUNNING, DONE, FAILED, CANCELLED = "running", "done", "failed", "cancelled"


class BackgroundDownload:
    def __init__(
        self,
        set_id: str,
        *,
        token: str | None = None,
        on_progress: Callable[[DownloadProgress], None] | None = None,
        **download_kwargs: Any,
    ) -> None:
        self.set_id = get_set(set_id).id  # an unknown set is refused here, at once
        self._token = token
        self._on_progress = on_progress
        self._kwargs = download_kwargs
        self._cancel = threading.Event()
        self._lock = threading.Lock()
        self._state = RUNNING
        self._progress: DownloadProgress | None = None
        self._error: tuple[str, str] | None = None
        self._page: str | None = None  # a gated repository: where its licence is accepted
        self._status: dict | None = None
        self._thread = threading.Thread(
            target=self._run, name=f"download-{self.set_id}", daemon=True
        )

    def start(self) -> BackgroundDownload:
        self._thread.start()
        return self

    def cancel(self) -> None:
        self._cancel.set()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the end; True when it ended."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def finished(self) -> bool:
        with self._lock:
            return self._state != RUNNING

    def state(self) -> dict:
        with self._lock:
            return {
                "set_id": self.set_id,
                "state": self._state,
                "progress": self._progress.to_dict() if self._progress else None,
                "error": {"code": self._error[0], "message": self._error[1], "page": self._page}
                if self._error
                else None,
                "status": self._status,
            }

    def _progress_cb(self, p: DownloadProgress) -> None:
        with self._lock:
            self._progress = p
        if self._on_progress is not None:
            self._on_progress(p)

    def _run(self) -> None:
        from ..errors import StableDreamerError
        from .errors import DownloadCancelled

        try:
            st = download_set(
                self.set_id, progress=self._progress_cb, cancel=self._cancel, token=self._token,
                **self._kwargs,
            )  # fmt: skip
            with self._lock:
                self._state, self._status = DONE, st.to_dict()
        except DownloadCancelled as e:
            with self._lock:
                self._state, self._error = CANCELLED, ("cancelled", str(e))
        except StableDreamerError as e:
            with self._lock:
                self._state, self._error = FAILED, (e.code, str(e))
                self._page = getattr(e, "page", None)
        except Exception as e:  # noqa: BLE001 - a bug: reported, never lost in the thread
            with self._lock:
                self._state, self._error = FAILED, ("internal", f"{type(e).__name__}: {e}")


class Downloads:
    """At most one download per set."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_set: dict[str, BackgroundDownload] = {}

    def start(self, set_id: str, **kwargs: Any) -> BackgroundDownload:
        with self._lock:
            d = self._by_set.get(set_id)
            if d is not None and not d.finished:
                return d
            d = BackgroundDownload(set_id, **kwargs).start()
            self._by_set[d.set_id] = d
            return d

    def get(self, set_id: str) -> BackgroundDownload | None:
        with self._lock:
            return self._by_set.get(set_id)

    def cancel(self, set_id: str) -> bool:
        d = self.get(set_id)
        if d is None or d.finished:
            return False
        d.cancel()
        return True
