"""A ring buffer of recent log lines, numbered, so a client can fetch what is new (``get_logs``)."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable

from stabledreamer_protocol.codec import clean_text


class LogBuffer(logging.Handler):
    """Keeps the last ``capacity`` formatted records as ``(number, job, text)``; numbers start
    at 1 and never repeat within one service run."""

    def __init__(self, capacity: int = 2000, level: int = logging.INFO) -> None:
        super().__init__(level)
        self.lines: deque[tuple[int, str | None, str]] = deque(maxlen=capacity)
        self.count = 0
        self._lock = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
            text = f"{stamp} {record.levelname} {record.name}: {record.getMessage()}"
            if record.exc_info and record.exc_info[1] is not None:
                text += f" ({type(record.exc_info[1]).__name__}: {record.exc_info[1]})"
            self.add(text, getattr(record, "job", None))
        except Exception:  # a log handler must never raise
            self.handleError(record)

    def add(self, text: str, job: str | None = None, max_chars: int = 4000) -> None:
        """Keep ``text`` (its first ``max_chars``, any lone surrogate replaced: a log line must
        always encode, whatever a prompt or file name held)."""
        text = clean_text(text[:max_chars])
        with self._lock:
            self.count += 1
            self.lines.append((self.count, job, text))

    def since(
        self,
        since: int,
        max_lines: int,
        job: str | None = None,
        max_bytes: int = 48 * 1024,
        visible: Callable[[str | None], bool] | None = None,
    ) -> tuple[list[str], int]:
        """The newest at most ``max_lines`` lines numbered above ``since`` (only ``job``'s when
        given), oldest first, within ``max_bytes`` of JSON (as the header carries them: quotes,
        backslashes and control characters escaped); and the number of the newest line seen
        (pass it as ``since`` next time). ``visible(job)``: only lines it accepts (ownership)."""
        with self._lock:
            picked = [
                (n, t)
                for n, j, t in self.lines
                if n > since and (job is None or j == job) and (visible is None or visible(j))
            ]
            cursor = self.count
        out: list[str] = []
        size = 0
        for _, text in reversed(picked[-max_lines:]):
            size += len(json.dumps(text, ensure_ascii=False).encode("utf-8")) + 1
            if size > max_bytes:
                break
            out.append(text)
        out.reverse()
        return out, cursor
