"""Which finished jobs the service deletes, so the state folder does not grow without bound.

A finished job (done, failed or cancelled) goes when it is older than ``keep_days``, or when
more than ``keep_jobs`` finished jobs or more than ``keep_bytes`` of them are kept (oldest
first). A done job whose result no client has fetched yet is spared all three until it is
``unfetched_days`` old: an artist away for a week still finds the result. Queued and running
jobs are never deleted.

The defaults are ours, not measured against a peer: 30 days and 1,000 jobs keep a month of a
busy artist's history (the listing pages through any number); 50 GiB is a fifth of a common
256 GiB system disk (a text job at the standard preset leaves tens of MB, so the job count
binds first); 90 days for unfetched results is three times the normal age.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from .jobs import JobRecord, JobStore

log = logging.getLogger("stabledreamer.service")

DAY_S = 86_400.0
FINISHED = ("done", "failed", "cancelled")


@dataclass(frozen=True)
class RetentionPolicy:
    keep_jobs: int = 1000
    """Finished jobs kept (the newest)."""
    keep_days: float = 30.0
    """Finished jobs older than this (since their last change) go."""
    keep_bytes: int = 50 * 2**30
    """Disk the finished jobs may use together (the newest are kept)."""
    unfetched_days: float = 90.0
    """A done job whose result was never fetched is kept this long, whatever the limits."""

    def __post_init__(self) -> None:
        for name in ("keep_jobs", "keep_days", "keep_bytes", "unfetched_days"):
            if getattr(self, name) < 0:
                raise ValueError(f"retention {name} must be at least 0")


def expired(records: list[JobRecord], sizes: dict[str, int], now: float,
            policy: RetentionPolicy) -> list[str]:  # fmt: skip
    """The jobs to delete, oldest first. ``records`` in submission order; ``sizes``: bytes on
    disk per job (missing: 0)."""
    out: list[str] = []
    kept_jobs = kept_bytes = 0
    for rec in reversed(records):  # newest first: they are the ones kept
        if rec.state not in FINISHED:
            continue
        age_days = (now - rec.updated) / DAY_S
        if rec.state == "done" and not rec.fetched:
            if age_days > policy.unfetched_days:
                out.append(rec.job)
            continue
        size = sizes.get(rec.job, 0)
        if (
            age_days > policy.keep_days
            or kept_jobs + 1 > policy.keep_jobs
            or kept_bytes + size > policy.keep_bytes
        ):
            out.append(rec.job)
            continue
        kept_jobs += 1
        kept_bytes += size
    out.reverse()
    return out


def apply_retention(
    store: JobStore, policy: RetentionPolicy, busy: Callable[[str], bool]
) -> list[str]:
    """Delete the expired jobs from ``store`` (and disk), skipping those ``busy`` says a worker
    still holds; returns the deleted ones."""
    recs = list(store.records.values())
    sizes = {r.job: store.size(r.job) for r in recs if r.state in FINISHED}
    gone = []
    for job in expired(recs, sizes, time.time(), policy):
        if busy(job):
            continue  # next time
        log.info("job %s deleted by the retention policy", job, extra={"job": job})
        store.delete(job)
        gone.append(job)
    return gone
