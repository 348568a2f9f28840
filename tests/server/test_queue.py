"""The fair queue: round-robin across owners, oldest first within one owner."""

from __future__ import annotations

from dataclasses import dataclass

from stabledreamer.server.queue import FairQueue


@dataclass
class Rec:
    job: str
    seq: int
    owner: str


def jobs(*spec: str) -> list[Rec]:
    """``"a1", "a2", "b1"``: owner letter, then anything; seq in the given order."""
    return [Rec(name, i, name[0]) for i, name in enumerate(spec)]


def run(q: FairQueue, queued: list[Rec], workers_free: int) -> list[str]:
    """Start jobs one at a time as the service does; returns the start order."""
    started = []
    queued = list(queued)
    for _ in range(workers_free):
        order = q.order(queued)
        if not order:
            break
        nxt = order[0]
        q.served(nxt.owner)
        queued.remove(nxt)
        started.append(nxt.job)
    return started


def test_one_clients_many_jobs_do_not_starve_anothers_single_prompt():
    q = FairQueue()
    queued = jobs(*(f"a{i}" for i in range(20)), "b0")  # b submitted last
    assert run(q, queued, 3) == ["a0", "b0", "a1"]


def test_round_robin_across_three_owners_and_fifo_within_each():
    q = FairQueue()
    queued = jobs("a1", "a2", "a3", "b1", "b2", "c1")
    assert [r.job for r in q.order(queued)] == ["a1", "b1", "c1", "a2", "b2", "a3"]
    assert q.positions(queued) == {"a1": 0, "b1": 1, "c1": 2, "a2": 3, "b2": 4, "a3": 5}


def test_the_owner_served_least_recently_goes_first():
    q = FairQueue()
    q.served("a")  # a's job is running
    queued = jobs("a2", "a3", "b1")
    assert [r.job for r in q.order(queued)] == ["b1", "a2", "a3"]
    q.served("b")
    assert [r.job for r in q.order(jobs("a2", "b2"))] == ["a2", "b2"]


def test_a_requeued_job_keeps_its_place_within_its_owner():
    q = FairQueue()
    queued = [Rec("a5", 5, "a"), Rec("a1-resumed", 1, "a")]  # seq 1: submitted first
    assert [r.job for r in q.order(queued)] == ["a1-resumed", "a5"]


def test_forget_drops_owners_without_jobs():
    q = FairQueue()
    q.served("a")
    q.served("b")
    q.forget(["b"])
    # a is like a new client again: before b, who was served
    assert [r.job for r in q.order(jobs("b1", "a1"))] == ["a1", "b1"]


def test_no_owner_is_one_client_in_submission_order():
    q = FairQueue()
    queued = [Rec("x", 2, ""), Rec("y", 1, ""), Rec("z", 3, "")]
    assert [r.job for r in q.order(queued)] == ["y", "x", "z"]
