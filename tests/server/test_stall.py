"""A worker that stops answering (SIGSTOP: hung, debugged, a dead disk) is noticed by its missing
heartbeat, its job is marked stalled, and cancel acts at once."""

from __future__ import annotations

import os
import signal
import time

from server_helpers import FAST, alive, wait_state, workers_of

from stabledreamer_protocol import JobState, Progress


def test_a_stopped_worker_is_marked_stalled_and_cancel_kills_it(tmp_path, make_server):
    from server_helpers import make_keys

    make_keys(tmp_path / "keys")
    s = make_server(tmp_path / "state", tmp_path / "keys", "--stall-s", "3")
    s.wait_ready()
    with s.client() as c:
        c.handshake(timeout_s=20)
        job = c.submit(target_format="demo", preset="smoke", seed=1,
                       overrides={**FAST, "reconstruct.steps": 400})  # fmt: skip
        assert c.wait_for(lambda e: isinstance(e, Progress) and e.job == job, 90), s.log()
        (worker,) = workers_of(s.proc.pid)
        os.kill(worker, signal.SIGSTOP)
        try:
            t0 = time.monotonic()
            hit = c.wait_for(
                lambda e: isinstance(e, JobState) and e.job == job and "stalled" in e.message, 20
            )
            assert hit is not None and hit.state == "running", s.log()
            noticed = time.monotonic() - t0
            assert noticed < 3 + 5, noticed  # the stall time, plus a housekeeping tick or two
            t1 = time.monotonic()
            c.cancel(job)
            wait_state(c, job, "cancelled", 10)
            deadline = time.monotonic() + 5
            while alive(worker) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert not alive(worker), "the stalled worker was not killed"
            print(f"stall noticed after {noticed:.1f} s; cancel killed it in "
                  f"{time.monotonic() - t1:.1f} s")  # fmt: skip
        finally:
            if alive(worker):
                os.kill(worker, signal.SIGKILL)
