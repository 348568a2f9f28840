"""Which queued job starts next: fair between clients.

A client is the owner a job record carries (its CURVE key; "" without CURVE). The next job goes
to the owner with queued jobs who was served least recently (an owner never served comes first,
ties by the oldest queued job); within one owner jobs start oldest first (by ``seq``: a job
re-queued after its worker died keeps its place). So one client's 20 variations take turns
with another client's single prompt instead of running ahead of it: round-robin across owners.

Pure bookkeeping, no processes and no I/O: the service asks for the order (``order``), starts
the first job on an idle worker and says so (``served``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol


class Queued(Protocol):
    job: str
    seq: int
    owner: str


class FairQueue:
    def __init__(self) -> None:
        self._served: dict[str, int] = {}
        """owner -> the tick it last had a job started (higher: more recent)."""
        self._tick = 0

    def served(self, owner: str) -> None:
        """A job of ``owner`` was handed to a worker."""
        self._tick += 1
        self._served[owner] = self._tick

    def forget(self, keep: Iterable[str]) -> None:
        """Drop the history of owners not in ``keep`` (those with no job left): the table stays
        as small as the set of clients with jobs."""
        keep = set(keep)
        for owner in [o for o in self._served if o not in keep]:
            del self._served[owner]

    def order(self, queued: Iterable[Queued]) -> list:
        """The queued jobs in the order they would start if workers freed one at a time."""
        per_owner: dict[str, list] = {}
        for rec in sorted(queued, key=lambda r: r.seq):
            per_owner.setdefault(rec.owner, []).append(rec)
        served = {o: self._served.get(o, 0) for o in per_owner}
        tick = self._tick
        out = []
        while per_owner:
            owner = min(per_owner, key=lambda o: (served[o], per_owner[o][0].seq))
            jobs = per_owner[owner]
            out.append(jobs.pop(0))
            if not jobs:
                del per_owner[owner]
            tick += 1
            served[owner] = tick
        return out

    def positions(self, queued: Iterable[Queued]) -> dict[str, int]:
        """job -> its place in ``order`` (0: next to start)."""
        return {rec.job: i for i, rec in enumerate(self.order(queued))}
