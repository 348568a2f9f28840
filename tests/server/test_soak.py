"""A soak of ``serve --workers 2``: 40 tiny jobs from 3 clients (25, 10 and 5 jobs, each its own
CURVE key), a few of them cancelled by their client (some while queued, some while running), and
busy workers SIGKILLed every few seconds (seeded, bounded). Afterwards:

- every job ends ``done``, or ``cancelled`` where its client's cancel was answered ``cancelled``
  (a cancel that came after the job finished is answered ``done`` and changes nothing); none
  failed, none lost (every id reaches a terminal state, in the client's view and on disk);
- none duplicated: a done job's result is produced once (one ``done`` in the log, one ``result``
  to its client, ``starts == 1 + crashes`` in its record, as many starts and crashes as the log
  has), and ``list_jobs`` lists each of a client's ids exactly once;
- a job whose worker was killed after its first checkpoint resumed from its last checkpoint (the
  log's step > 0) and still ran all its steps; done jobs of one seed (each client submits seeds
  0, 1, ...) end with the very same Gaussians, killed and resumed or not;
- fairness: every start obeys ``FairQueue``'s policy (server/queue.py), replayed from the log: the
  job started is the oldest queued job of the owner, among those with queued jobs, served least
  recently (never served first, ties by the oldest queued job). So with everything queued at
  once the first three starts are one job of each client, where first-come-first-served would
  have started 25 jobs of one client first.

Kills are spread so no job fails: each job is aimed at once at most, only when its client has
just seen it between its 4th and its ``STEPS // 2``-th step (so a checkpoint exists, and half its
steps are still to go when the kill lands). A kill that missed anyway (its job just finished) hits
the worker's next job; a job would die three times, the service's limit (``MAX_CRASHES``), only if
two kills missed onto it as well.

To make the queue order independent of timing, two long "gate" jobs of a fourth key hold both
workers while the 40 are submitted (alice's 25 accepted before bob's 10, then carol's 5); they
are then cancelled. The test stops itself (a clear failure naming the unfinished jobs) after
``TIME_LIMIT_S``.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import signal
import time
from contextlib import ExitStack
from dataclasses import dataclass, field

import pytest
import zmq
from server_helpers import FAST, make_keys, reply_to, workers_of

from stabledreamer_protocol import Error, JobState, Progress, Result
from stabledreamer_protocol.client import Client, ResultDownloaded

pytestmark = pytest.mark.soak

SEED = 15
COUNTS = {"alice": 25, "bob": 10, "carol": 5}
STEPS = 40
OVERRIDES = {**FAST, "reconstruct.steps": STEPS, "checkpoint_every": 2, "mesh.enabled": False}
GATE = {**FAST, "reconstruct.steps": 100_000, "checkpoint_every": 100_000, "mesh.enabled": False}
CANCEL_QUEUED = 3
CANCEL_RUNNING = 3
MAX_KILLS = 5
KILL_EVERY_S = (1.5, 3.0)
FRESH_S = 0.15
"""A kill is aimed at a job whose client saw its step that recently (progress comes every 0.1 s;
a warm job makes about 40 steps a second here)."""
TIME_LIMIT_S = 150.0
TERMINAL = ("done", "cancelled", "failed")

QUEUED = re.compile(r"job (\w+) queued:")
STARTED = re.compile(r"job (\w+) started on worker (\d+)")
CRASHED = re.compile(r"job (\w+): worker \d+'s process ended unexpectedly")
CANCELLED = re.compile(r"job (\w+) cancelled$")
DONE = re.compile(r"job (\w+) done:")
RESUMED = re.compile(r"job (\w+): resumed from its checkpoint at \S+ step (\d+) of")
READY = re.compile(r"worker (\d+) ready \(pid (\d+)\)")


@dataclass
class Seen:
    """What a job's client heard about it."""

    owner: str
    state: str = ""
    step: int = 0
    step_at: float = 0.0
    results: int = 0
    downloads: list = field(default_factory=list)
    errors: list = field(default_factory=list)


class Soak:
    def __init__(self, server, clients: dict[str, Client]) -> None:
        self.server, self.clients = server, clients
        self.jobs: dict[str, Seen] = {}
        self.replies: dict[str, JobState | None] = {}
        """Answers to the cancels, by the cancel's message id (None until it comes)."""
        self.asked: dict[str, str] = {}
        """job -> the message id of its client's cancel."""
        self.cancel_running: set[str] = set()
        """Jobs to cancel as soon as their client sees them make progress."""

    def submit(self, owner: str, seed: int, overrides: dict) -> str:
        job = self.clients[owner].submit(
            target_format="demo", preset="smoke", seed=seed, overrides=overrides
        )
        self.jobs[job] = Seen(owner)
        return job

    def cancel(self, job: str) -> None:
        self.asked[job] = self.clients[self.jobs[job].owner].cancel(job)
        self.replies[self.asked[job]] = None

    def pump(self, wait_s: float = 0.05) -> None:
        """Read every client's events (waiting at most ``wait_s`` for one when none is there)."""
        batches = [c.poll_events() for c in self.clients.values()]
        if not any(batches):
            poller = zmq.Poller()
            for c in self.clients.values():
                poller.register(c.socket, zmq.POLLIN)
            poller.poll(int(wait_s * 1000))
            batches = [c.poll_events() for c in self.clients.values()]
        for events in batches:
            for e in events:
                seen = self.jobs.get(getattr(e, "job", None) or "")
                if isinstance(e, JobState) and e.re is not None and e.re in self.replies:
                    self.replies[e.re] = e
                if seen is None:
                    continue
                if isinstance(e, JobState):
                    seen.state = e.state
                elif isinstance(e, Progress):
                    seen.step, seen.step_at = e.step, time.monotonic()
                    # at once: the rest of this batch may already say it is done
                    running = seen.state == "running" and e.step >= 2
                    if running and e.job in self.cancel_running and e.job not in self.asked:
                        self.cancel(e.job)
                elif isinstance(e, Result):
                    seen.results += 1
                elif isinstance(e, ResultDownloaded):
                    seen.downloads.append(e)
                elif isinstance(e, Error):
                    seen.errors.append(e)

    def wait(self, until, what: str, deadline: float) -> None:
        while not until():
            if time.monotonic() > deadline:
                self.overrun(what)
            self.pump()

    def overrun(self, what: str) -> None:
        open_jobs = {j[:8]: (s.owner, s.state, s.step) for j, s in self.jobs.items()
                     if s.state not in TERMINAL}  # fmt: skip
        pytest.fail(
            f"soak overran {TIME_LIMIT_S:.0f} s waiting for {what}; unfinished: {open_jobs}\n"
            f"server log:\n{self.server.log()}"
        )

    def log_lines(self) -> list[str]:
        return self.server.log_path.read_text(errors="replace").splitlines()

    def pid_running(self, job: str) -> int | None:
        """The pid of the worker the log says ``job`` last started on."""
        lines = self.log_lines()
        slots = [int(m[2]) for line in lines if (m := STARTED.search(line)) and m[1] == job]
        pids = {int(m[1]): int(m[2]) for line in lines if (m := READY.search(line))}
        return pids.get(slots[-1]) if slots else None


def check_fair_starts(lines: list[str], owner: dict[str, str]) -> list[str]:
    """Replay the service's log (one thread writes it, in the order things happened) and check
    every start against the fair queue's policy; returns the jobs in the order they started."""
    seq: dict[str, int] = {}
    queued: set[str] = set()
    served: dict[str, int] = {}
    starts: list[str] = []
    for line in lines:
        if m := QUEUED.search(line):
            seq[m[1]] = len(seq) + 1
            queued.add(m[1])
        elif m := STARTED.search(line):
            job = m[1]
            assert job in queued, f"{job} started without being queued"
            heads: dict[str, str] = {}
            for j in sorted(queued, key=seq.__getitem__):
                heads.setdefault(owner[j], j)
            expected = min(heads, key=lambda o: (served.get(o, 0), seq[heads[o]]))
            assert job == heads[expected], (
                f"start {len(starts) + 1}: {owner[job]}'s {job[:8]} started, but the policy "
                f"starts {expected}'s {heads[expected][:8]} (queued heads {heads}, served {served})"
            )
            queued.discard(job)
            served[owner[job]] = len(starts) + 1
            starts.append(job)
        elif m := CRASHED.search(line):
            queued.add(m[1])  # re-queued with its old seq: it keeps its place
        elif m := CANCELLED.search(line):
            queued.discard(m[1])
    return starts


def all_pages(client: Client) -> list[str]:
    ids, offset = [], 0
    while offset is not None:
        page = reply_to(client, client.list_jobs(offset=offset))
        ids += [j.job for j in page.jobs]
        offset = page.next
    return ids


def test_soak_of_three_clients_with_worker_kills_and_cancels(tmp_path, make_server):
    started_at = time.monotonic()
    deadline = started_at + TIME_LIMIT_S
    rng = random.Random(SEED)
    keys = tmp_path / "keys"
    make_keys(keys, *COUNTS, "gate")
    s = make_server(tmp_path / "state", keys, "--workers", "2", "--max-queue", "64")
    s.wait_ready()
    with ExitStack() as stack:
        clients = {}
        for name in [*COUNTS, "gate"]:
            c = Client(s.endpoint, client_secret=keys / f"{name}.key_secret",
                       server_public=keys / "server.key").connect()  # fmt: skip
            stack.callback(c.close)
            c.handshake(timeout_s=20)
            clients[name] = c
        soak = Soak(s, clients)

        # Two gates hold both (warm) workers while every job is submitted, client after client:
        # first come first served would run alice's 25 before anyone else's.
        gates = [soak.submit("gate", i, GATE) for i in range(2)]
        soak.wait(lambda: all(soak.jobs[g].step >= 1 for g in gates), "the gates", deadline)
        mine: dict[str, list[str]] = {}
        for name, n in COUNTS.items():
            mine[name] = [soak.submit(name, i, OVERRIDES) for i in range(n)]
            soak.wait(lambda name=name: all(soak.jobs[j].state == "queued" for j in mine[name]),
                      "submits", deadline)  # fmt: skip
        jobs = [j for name in COUNTS for j in mine[name]]

        # Some cancels while queued (answered "cancelled", never started) ...
        cancel_queued = rng.sample(jobs, CANCEL_QUEUED)
        asked = soak.asked
        for job in cancel_queued:
            soak.cancel(job)
        soak.wait(lambda: all(soak.replies[asked[j]] for j in cancel_queued), "cancels", deadline)
        assert all(soak.replies[asked[j]].state == "cancelled" for j in cancel_queued)
        # ... and some to send once the job runs.
        cancel_running = rng.sample([j for j in jobs if j not in cancel_queued], CANCEL_RUNNING)
        soak.cancel_running.update(cancel_running)
        for g in gates:
            soak.cancel(g)

        kills: dict[str, int] = {}  # job aimed at -> the step its client last saw
        next_kill = time.monotonic() + rng.uniform(*KILL_EVERY_S)
        while not all(soak.jobs[j].state in TERMINAL for j in [*jobs, *gates]):
            if time.monotonic() > deadline:
                soak.overrun("every job to end")
            soak.pump()
            now = time.monotonic()
            if len(kills) >= MAX_KILLS or now < next_kill:
                continue
            candidates = sorted(
                j for j in jobs
                if soak.jobs[j].state == "running" and j not in kills and j not in cancel_running
                and 4 <= soak.jobs[j].step <= STEPS // 2 and now - soak.jobs[j].step_at < FRESH_S
            )  # fmt: skip
            pid = soak.pid_running(victim := rng.choice(candidates)) if candidates else None
            if pid is not None and pid in workers_of(s.proc.pid):  # never a reused pid
                os.kill(pid, signal.SIGKILL)
                kills[victim] = soak.jobs[victim].step
                next_kill = now + rng.uniform(*KILL_EVERY_S)
        soak.wait(lambda: all(r is not None for r in soak.replies.values()), "replies", deadline)
        soak.wait(  # the results of done jobs download
            lambda: all(len(soak.jobs[j].downloads) == 1 for j in jobs
                        if soak.jobs[j].state == "done"),
            "downloads", deadline,
        )  # fmt: skip
        listed = {name: all_pages(clients[name]) for name in COUNTS}
        runtime = time.monotonic() - started_at

    lines = soak.log_lines()
    owner = {j: seen.owner for j, seen in soak.jobs.items()}

    def count(pattern, job):
        return sum(1 for line in lines if (m := pattern.search(line)) and m[1] == job)

    # Every job ends as asked: done, or cancelled where the cancel was answered so.
    for job in jobs:
        seen = soak.jobs[job]
        reply = soak.replies[asked[job]] if job in asked else None
        expected = reply.state if reply is not None else "done"
        assert expected in ("done", "cancelled"), (job, reply)
        assert seen.state == expected, (job, seen.state, reply)
        assert not seen.errors, (job, seen.errors)
        record = json.loads((s.state / "jobs" / f"j-{job}" / "job.json").read_text())
        assert record["state"] == expected, record
        # None duplicated: starts and crashes as the log has them; a done job ran all its
        # steps once to the end and its result was produced and sent once.
        assert record["starts"] == count(STARTED, job), record
        assert record["crashes"] == count(CRASHED, job) <= 2, record
        assert count(DONE, job) == (expected == "done")
        assert seen.results == len(seen.downloads) == (expected == "done"), job
        if expected == "done":
            assert record["starts"] == 1 + record["crashes"], record
            metrics = json.loads(seen.downloads[0].files["metrics.json"])
            assert metrics["steps"] == STEPS, metrics
    assert all(soak.jobs[j].state == "cancelled" for j in [*cancel_queued, *gates])
    # Every running cancel was sent (a job reports its last step at least); most stop it.
    answers = [soak.replies[asked[j]].state for j in cancel_running]
    assert "cancelled" in answers, answers
    assert all(count(STARTED, j) == 0 for j in cancel_queued), "a cancelled queued job started"
    # Nothing lost, nothing listed twice.
    for name in COUNTS:
        assert sorted(listed[name]) == sorted(mine[name]), name

    # Killed jobs resumed from their last checkpoint (they were aimed at after their 4th step;
    # the checkpoint of the step seen may have been being written when the kill came).
    resumed = {}
    for job, step_seen in kills.items():
        if count(CRASHED, job):
            steps = [int(m[2]) for line in lines if (m := RESUMED.search(line)) and m[1] == job]
            assert steps and max(steps) >= max(2, step_seen - 2), (job, step_seen, steps)
            resumed[job] = max(steps)
    assert len(resumed) >= 2, f"too few kills landed to test resuming: {kills}"
    # Clients submit seeds 0, 1, ...: done jobs of one seed end with the very same Gaussians,
    # killed and resumed or not, whichever worker ran them (the CPU is bit-exact).
    by_seed: dict[int, dict[str, str]] = {}
    for name in COUNTS:
        for seed, job in enumerate(mine[name]):
            if soak.jobs[job].state == "done":
                ply = soak.jobs[job].downloads[0].files["gaussians.ply"]
                by_seed.setdefault(seed, {})[job] = hashlib.sha256(ply).hexdigest()
    assert all(len(set(d.values())) == 1 for d in by_seed.values()), by_seed
    twinned = [j for d in by_seed.values() if len(d) > 1 for j in d if j in resumed]

    # Fairness: every start (first ones and resumes) obeyed the policy.
    starts = check_fair_starts(lines, owner)
    first = [owner[j] for j in dict.fromkeys(starts) if j not in gates]
    # Never-served owners go first, so the first three are one job of each client whatever the
    # kills did (first come first served would have started alice's 25 first).
    assert sorted(first[:3]) == sorted(COUNTS), first[:6]
    print(
        f"soak: {len(jobs)} jobs in {runtime:.1f} s, {len(kills)} kills "
        f"({sum(count(CRASHED, j) for j in jobs)} landed), resumed at steps "
        f"{sorted(resumed.values())} ({len(twinned)} checked against a job of the same seed), "
        f"{CANCEL_QUEUED} cancels while queued, "
        f"{answers.count('cancelled')} of {CANCEL_RUNNING} while running, "
        f"first starts {''.join(o[0] for o in first[:12])}"
    )
