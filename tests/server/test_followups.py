"""Refine and continue through the service (protocol 1.3): new jobs that remember their parent,
resolved by the service itself; bad parents refused with their codes; the listing's new fields."""

from __future__ import annotations

import json

from server_helpers import FAST_TEXT, make_keys, reply_to, wait_state

from stabledreamer.guidance.tiny_models import save_tiny_models
from stabledreamer_protocol import Delete, Error, Jobs
from stabledreamer_protocol.client import ResultDownloaded

FAST = {**FAST_TEXT, "geometry.steps": 2, "detail.steps": 2, "mesh.enabled": False}


def error_of(client, job, timeout_s=20):
    hit = client.wait_for(lambda e: isinstance(e, Error) and e.job == job, timeout_s)
    assert hit is not None, f"no error for {job}"
    return hit


def test_refine_continue_and_bad_parents(tmp_path, make_server):
    tiny = tmp_path / "tiny"
    save_tiny_models(tiny)
    keys = tmp_path / "keys"
    make_keys(keys, "alice")
    s = make_server(
        tmp_path / "state", keys, "--if-model", str(tiny / "if"), "--sd-model", str(tiny / "sd")
    )
    s.wait_ready()
    jobs = tmp_path / "state" / "jobs"
    alice_keys = {"client_secret": keys / "alice.key_secret", "server_public": keys / "server.key"}
    with s.client() as c, s.client(keys=None, **alice_keys) as alice:
        hello = c.handshake(timeout_s=10)
        assert "followups" in hello.features and hello.protocol == "1.5"
        alice.handshake(timeout_s=10)
        parent = c.submit("a red chair", preset="preview", seed=1, overrides=FAST)
        # refused while the parent runs, and by its kind, owner or absence
        early = c.submit(parent=parent, mode="continue", steps=2)
        assert error_of(c, early).code == "parent_not_done"
        demo = c.submit(target_format="demo", preset="smoke")
        assert error_of(c, c.submit(parent=demo, mode="continue", steps=1)).code == "unsupported"
        c.cancel(demo)
        assert error_of(c, c.submit(parent="nope", mode="refine")).code == "unknown_parent"
        theirs = alice.submit(parent=parent, mode="refine", prompt="x")
        assert error_of(alice, theirs).code == "forbidden"
        hit = c.wait_for(lambda e: isinstance(e, ResultDownloaded) and e.job == parent, 120)
        assert hit is not None, s.log()
        first = {j.job: j for j in reply_to(c, c.list_jobs()).jobs}[parent]
        assert first.parent is None and first.mode is None and first.mine is True
        # refine with a new prompt: only the detail stage, from the parent's Gaussians
        refine = c.submit("a blue chair", negative="blurry", parent=parent, mode="refine", seed=5)
        cont = c.submit(parent=parent, mode="continue", steps=3)
        wait_state(c, cont, "queued")
        # the parent deleted before they run: its state was linked into them when accepted
        assert isinstance(reply_to(c, c.send(Delete(job=parent))), Jobs)
        assert not (jobs / f"j-{parent}").exists()
        for job in (refine, cont):
            hit = c.wait_for(lambda e, j=job: isinstance(e, ResultDownloaded) and e.job == j, 120)
            assert hit is not None, s.log()
        rconf = json.loads((jobs / f"j-{refine}" / "run" / "config.json").read_text())
        assert [st["name"] for st in rconf["stages"]] == ["detail"]
        assert rconf["prompt"] == "a blue chair" and rconf["seed"] == 5
        assert rconf["stable_diffusion"]["negative_prompt"] == "blurry"
        assert rconf["stages"][0]["lr"]["means"] == 0.0
        assert rconf["stable_diffusion"]["model"] == str(tiny / "sd")
        cconf = json.loads((jobs / f"j-{cont}" / "run" / "config.json").read_text())
        assert cconf["prompt"] == "a red chair" and cconf["stages"][0]["steps"] == 3
        assert cconf["stages"][0]["noise"]["schedule"] == "constant"
        metrics = json.loads((jobs / f"j-{cont}" / "run" / "metrics.json").read_text())
        assert metrics["mode"] == "continue" and metrics["parent"] == parent
        assert metrics["steps"] == 3
        assert (jobs / f"j-{refine}" / "parent" / "checkpoints" / "last.pt").is_file()
        listing = reply_to(c, c.list_jobs())
        assert isinstance(listing, Jobs)
        by_id = {j.job: j for j in listing.jobs}
        assert (by_id[refine].parent, by_id[refine].mode) == (parent, "refine")
        assert (by_id[cont].parent, by_id[cont].mode) == (parent, "continue")
        assert by_id[cont].seed is not None
        # a bad override of a follow-up is refused at submit; a deleted parent is unknown
        bad = c.submit(parent=refine, mode="continue", steps=1, overrides={"geometry.steps": 1})
        assert error_of(c, bad).code == "bad_override"
        gone = c.submit(parent=parent, mode="continue", steps=1)
        assert error_of(c, gone).code == "unknown_parent"
        # the listing of active jobs: mine, with queue positions; other keys' jobs counted
        slow = {**FAST, "geometry.steps": 2000}
        mine = [c.submit("a slow chair", preset="preview", overrides=slow) for _ in range(2)]
        hers = alice.submit("her chair", preset="preview", overrides=slow)
        wait_state(alice, hers, "queued")
        wait_state(c, mine[0], ("queued", "running"))
        a = reply_to(alice, alice.list_jobs(active=True))
        assert [j.job for j in a.jobs] == [hers] and a.others_active == 2
        # the fair queue may start her single job before his second: a position while queued
        assert (a.jobs[0].state == "queued") == (a.jobs[0].queue_position is not None)
        assert a.jobs[0].mine is True
        for job in (*mine, hers):
            (alice if job == hers else c).cancel(job)
