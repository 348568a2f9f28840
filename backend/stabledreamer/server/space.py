"""Jobs held back by a full disk until their folder's filesystem has room again."""

from __future__ import annotations

from pathlib import Path

from ..atomic import LOW_SPACE_BYTES, free_bytes
from .jobs import JobStore


class SpaceWait:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.waiting: dict[str, int] = {}
        """job -> the free bytes it waits for."""

    def hold(self, job: str, needed: int) -> None:
        """Hold ``job`` until ``needed`` bytes (at least ``LOW_SPACE_BYTES``) are free."""
        self.waiting[job] = max(needed, LOW_SPACE_BYTES)

    def holds(self, job: str) -> bool:
        return job in self.waiting

    def release(self, store: JobStore) -> list[str]:
        """Let go of the jobs that now have room (or are no longer queued); returns those that
        may resume."""
        out = []
        for job, needed in list(self.waiting.items()):
            rec = store.get(job)
            if rec is None or rec.state != "queued":
                del self.waiting[job]
            elif free_bytes(self.folder) >= needed:
                del self.waiting[job]
                out.append(job)
        return out
