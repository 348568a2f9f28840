"""Paged job listings and the retention policy, over generated histories."""

from __future__ import annotations

import random

import pytest

from stabledreamer.server.jobs import JobRecord, JobStore
from stabledreamer.server.retention import DAY_S, FINISHED, RetentionPolicy, expired
from stabledreamer.server.service import Service, ServiceConfig
from stabledreamer.server.views import jobs_page
from stabledreamer_protocol import DEFAULT_LIMITS, Limits, codec, encode

TEXTS = ["", "a teapot", "x" * 2000, "\U0001f600" * 2000, "\u0301" * 2000, "\ufffd" * 1999]


def history(n: int, seed: int) -> list[JobRecord]:
    rng = random.Random(seed)
    return [
        JobRecord(job=f"j{i}", seq=i, digest="d", kind="generate", preset="standard", seed=i,
                  prompt=rng.choice(TEXTS), state=rng.choice(("queued", "running", *FINISHED)))
        for i in range(n)
    ]  # fmt: skip


@pytest.mark.parametrize("n", [0, 1, 37, 500, 2500])
@pytest.mark.parametrize("limits", [DEFAULT_LIMITS, Limits(max_header_bytes=8 * 1024)])
def test_pages_cover_everything_and_each_fits(n, limits):
    recs = history(n, seed=n)
    seen, offset, pages = [], 0, 0
    while True:
        page = jobs_page(recs, offset, None, limits, re="r")
        frames = encode(page, limits=limits)  # the codec's own size checks
        assert len(frames[0]) <= limits.max_header_bytes
        back = codec.decode(frames, limits=limits)
        assert back.total == n and back.offset == offset
        seen += [j.job for j in back.jobs]
        pages += 1
        if back.next is None:
            break
        assert back.next == offset + len(back.jobs) and back.jobs
        offset = back.next
    assert seen == [r.job for r in recs]
    assert pages <= max(1, n)


def test_limit_and_an_offset_past_the_end():
    recs = history(10, seed=1)
    page = jobs_page(recs, 2, 3, DEFAULT_LIMITS)
    assert [j.job for j in page.jobs] == ["j2", "j3", "j4"] and page.next == 5
    end = jobs_page(recs, 99, None, DEFAULT_LIMITS)
    assert end.jobs == [] and end.next is None and end.total == 10


def aged(n: int, seed: int, now: float) -> tuple[list[JobRecord], dict[str, int]]:
    rng = random.Random(seed)
    recs, sizes = [], {}
    for i in range(n):
        rec = JobRecord(job=f"j{i}", seq=i, digest="d", kind="demo", preset="smoke", seed=1)
        rec.state = rng.choice(("queued", "running", *FINISHED))
        rec.fetched = rng.random() < 0.5
        rec.updated = now - (n - i) * rng.uniform(0, 2) * DAY_S  # older first, roughly
        sizes[rec.job] = rng.randrange(0, 10**9)
        recs.append(rec)
    return recs, sizes


POLICIES = [
    RetentionPolicy(),
    RetentionPolicy(keep_jobs=0),
    RetentionPolicy(keep_jobs=5, keep_days=1e9, keep_bytes=2**62),
    RetentionPolicy(keep_days=3, unfetched_days=10),
    RetentionPolicy(keep_bytes=3 * 10**9),
]


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("seed", range(6))
def test_retention_rules_hold(policy, seed):
    now = 1e9
    recs, sizes = aged(200, seed, now)
    gone = set(expired(recs, sizes, now, policy))
    by_job = {r.job: r for r in recs}
    for job in gone:
        rec = by_job[job]
        assert rec.state in FINISHED  # never a queued or running job
        if rec.state == "done" and not rec.fetched:
            assert now - rec.updated > policy.unfetched_days * DAY_S
    kept = [r for r in recs if r.job not in gone and r.state in FINISHED]
    ordinary = [r for r in kept if r.fetched or r.state != "done"]
    assert len(ordinary) <= policy.keep_jobs
    assert sum(sizes[r.job] for r in ordinary) <= policy.keep_bytes
    assert all(now - r.updated <= policy.keep_days * DAY_S for r in ordinary)
    unfetched = [r for r in kept if not r.fetched and r.state == "done"]
    assert all(now - r.updated <= policy.unfetched_days * DAY_S for r in unfetched)


def test_negative_policy_is_refused():
    with pytest.raises(ValueError, match="keep_days"):
        RetentionPolicy(keep_days=-1)


def test_the_service_deletes_expired_jobs_from_disk(tmp_path):
    service = Service(
        ServiceConfig(bind="tcp://127.0.0.1:1", state=tmp_path, prewarm=False,
                      retention=RetentionPolicy(keep_jobs=2))
    )  # fmt: skip
    store: JobStore = service.store
    for i in range(5):
        rec = JobRecord(job=f"j{i}", seq=store.next_seq(), digest="d", kind="demo",
                        preset="smoke", seed=1, state="failed")  # fmt: skip
        store.create(rec, {"target.ply": b"x" * 10})
    running = JobRecord(job="r", seq=store.next_seq(), digest="d", kind="demo", preset="smoke",
                        seed=1, state="running")  # fmt: skip
    store.create(running, {})
    service._apply_retention()
    assert sorted(store.records) == ["j3", "j4", "r"]
    assert sorted(p.name for p in store.root.iterdir()) == ["j-j3", "j-j4", "j-r"]


def test_a_file_linked_into_a_follow_up_counts_once_across_the_jobs(tmp_path):
    """A follow-up links its parent's files (``parent/``): the two jobs' sizes together are
    the disk the file uses, so ``keep_bytes`` does not count it twice."""
    store = JobStore(tmp_path)
    parent = JobRecord(job="p", seq=store.next_seq(), digest="d", kind="demo", preset="smoke",
                       seed=1, state="done")  # fmt: skip
    store.create(parent, {"state.pt": b"x" * 1000, "log.txt": b"y" * 10})
    child = JobRecord(job="c", seq=store.next_seq(), digest="e", kind="demo", preset="smoke",
                      seed=1, state="done")  # fmt: skip
    store.create(child, {"parent.pt": store.dir("p") / "state.pt", "own.txt": b"z" * 100})
    if (store.dir("c") / "parent.pt").stat().st_nlink < 2:
        pytest.skip("no hard links on this file system: the file is copied")
    records = {j: (store.dir(j) / "job.json").stat().st_size for j in "pc"}
    assert store.size("p") == 500 + 10 + records["p"]
    assert store.size("c") == 500 + 100 + records["c"]
