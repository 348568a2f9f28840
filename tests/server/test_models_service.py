"""Model sets over the wire: a real ``stabledreamer serve`` whose downloads go to a local hub on
loopback (``HF_ENDPOINT``) through the real huggingface_hub client, real DEALER clients.

One session in order (a server start and the tiny models are the costs): the sets listed with
their licences; a text job whose set is missing refused at once with ``models_missing``; a gated
set's download failing with the page to accept its licence; a slow download cancelled, keeping
nothing half-made; the token given over CURVE (stored owner-only, never sent back, never
logged); a download to the end with progress; a text job that waits for its gated set (the token
opens it), reports the download as its stage, then runs. A backend without CURVE refuses the
token.
"""

from __future__ import annotations

import stat

from server_helpers import FAST_TEXT, make_keys, reply_to, wait_state

from stabledreamer.models import sets
from stabledreamer.models.testing_hub import LocalHub
from stabledreamer_protocol import (
    CancelDownload,
    DownloadModels,
    DownloadState,
    Error,
    JobState,
    ListJobs,
    ListModels,
    Models,
    Progress,
    SetToken,
    TokenState,
)
from stabledreamer_protocol.client import ResultDownloaded

TOKEN = "hf_good_token_123"


def downloads(client, set_id, until, timeout_s=60.0) -> list[DownloadState]:
    """``download_state`` events of ``set_id`` up to the first whose state is in ``until``."""
    seen = []
    hit = client.wait_for(
        lambda e: (
            isinstance(e, DownloadState)
            and e.set == set_id
            and (seen.append(e) or e.state in until)
        ),
        timeout_s,
    )
    assert hit is not None, f"no {until} for {set_id}; saw {[s.state for s in seen]}"
    return seen


def test_models_over_the_wire(tiny_models_fp16, tmp_path, make_server, monkeypatch):
    hub = LocalHub(
        {sets.SD_21_BASE: tiny_models_fp16 / "sd", sets.IF_I_XL: tiny_models_fp16 / "if"},
        gated={sets.IF_I_XL: {TOKEN}},
        chunk_bytes=16 * 1024,
    ).start()
    token_file = tmp_path / "cfg" / "hf_token"
    cache = tmp_path / "hf" / "hub"
    monkeypatch.setenv("HF_ENDPOINT", hub.url)  # the servers inherit this environment
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("STABLEDREAMER_HF_TOKEN_FILE", str(token_file))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    keys = tmp_path / "keys"
    make_keys(keys)
    s = make_server(tmp_path / "state", keys, "--models", "sd-only")
    plain = make_server(tmp_path / "state2", keys, "--no-curve")
    try:
        with plain.client(keys=None) as c:  # --- without CURVE the token is refused
            assert "models" in c.handshake(timeout_s=60).features
            err = reply_to(c, c.send(SetToken(token=TOKEN)))
            assert isinstance(err, Error) and err.code == "curve_required", err
            assert "CURVE" in err.message and TOKEN not in err.message
        plain.stop()
        assert not token_file.exists()

        s.wait_ready()
        with s.client() as c:
            assert "models" in c.handshake(timeout_s=10).features
            # --- the sets, their licences, nothing downloaded, no token
            listed = reply_to(c, c.send(ListModels()))
            assert isinstance(listed, Models) and listed.default == "sd-only"
            assert {x.id for x in listed.sets} == set(sets.SET_IDS)
            sd_only, if_sd = listed.get("sd-only"), listed.get("if-sd")
            assert sd_only.commercial and not sd_only.present and sd_only.download == "idle"
            assert "CreativeML Open RAIL++-M" in sd_only.licence_line
            assert not if_sd.commercial and if_sd.gated and "non-commercial" in if_sd.output_use
            assert [m.key for m in if_sd.models] == ["if_unet", "t5", "sd"]
            assert if_sd.models[0].hub_page.endswith(sets.IF_I_XL) and if_sd.bytes_missing > 0
            assert not listed.token_set and listed.token_source == "none"

            # --- a text job whose set is missing: refused at once, naming what to download
            fast = {**FAST_TEXT, "geometry.steps": 2, "detail.steps": 2}
            job = c.submit("a lamp", preset="preview", seed=1, overrides=fast)
            err = c.wait_for(lambda e: isinstance(e, Error | JobState) and e.job == job, 10)
            assert isinstance(err, Error) and err.code == "models_missing", err
            assert "'sd-only'" in err.message and sets.SD_21_BASE in err.message
            assert "models download sd-only" in err.message

            # --- a gated set without a token: fails with the page to accept its licence
            state = reply_to(c, c.send(DownloadModels(set="if-sd")))
            assert isinstance(state, DownloadState) and state.state in ("running", "failed")
            end = downloads(c, "if-sd", ("failed",))[-1]
            assert end.code == "gated" and end.link == f"{hub.url}/{sets.IF_I_XL}"
            assert "accept its licence" in end.message

            # --- a slow download, cancelled: nothing half-made counts as present
            hub.slow_s_per_chunk = 0.05
            c.send(DownloadModels(set="sd-only"))
            seen = downloads(c, "sd-only", ("running",))
            while seen[-1].bytes_done < 64 * 1024:
                seen += downloads(c, "sd-only", ("running", "failed", "done"))
                assert seen[-1].state == "running", seen[-1]
            answer = reply_to(c, c.send(CancelDownload(set="sd-only")))
            assert answer.message == "cancelling"
            end = downloads(c, "sd-only", ("cancelled", "done", "failed"))[-1]
            assert end.state == "cancelled" and end.code == "cancelled", end
            assert not reply_to(c, c.send(ListModels())).get("sd-only").present
            assert not list(cache.rglob("*.incomplete"))
            hub.slow_s_per_chunk = 0.01

            # --- the token over CURVE: stored owner-only, never sent back
            reply = reply_to(c, c.send(SetToken(token=TOKEN)))
            assert isinstance(reply, TokenState) and reply.set and reply.source == "file"
            assert TOKEN not in str(reply.body())
            assert token_file.read_text().strip() == TOKEN
            assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
            bad = reply_to(c, c.send(SetToken(token="two words")))
            assert isinstance(bad, Error) and bad.code == "bad_field" and "two" not in bad.message
            listed = reply_to(c, c.send(ListModels()))
            assert listed.token_set and listed.token_source == "file"
            assert TOKEN not in str(listed.body())

            # --- a download to the end, with progress
            state = reply_to(c, c.send(DownloadModels(set="sd-only")))
            assert state.state == "running"
            seen = downloads(c, "sd-only", ("done", "failed"))
            assert seen[-1].state == "done", seen[-1]
            running = [x for x in seen if x.state == "running" and x.bytes_total]
            assert running and all(x.bytes_done <= x.bytes_total for x in running)
            assert any(x.model == sets.SD_21_BASE and x.bytes_done > 0 for x in running)
            assert reply_to(c, c.send(ListModels())).get("sd-only").present
            again = reply_to(c, c.send(DownloadModels(set="sd-only")))  # complete: done at once
            assert again.state == "done" and "already" in again.message
            hub.slow_s_per_chunk = 0.0

            # --- a text job that waits for its (gated) set: the download is its stage, then it
            # runs, stage 1 loading IF from the cache
            job = c.submit("a lamp", preset="preview", seed=1, overrides=fast, models="if-sd",
                           wait_for_models=True)  # fmt: skip
            waiting = wait_state(c, job, "queued", 10)
            if waiting.stage != "waiting_models":
                waiting = c.wait_for(lambda e: isinstance(e, JobState) and e.job == job
                                     and e.stage == "waiting_models", 10)  # fmt: skip
            assert waiting is not None and "if-sd" in waiting.message
            staged = c.wait_for(
                lambda e: isinstance(e, Progress) and e.job == job and e.stage == "waiting_models",
                30,
            )
            assert staged is not None and staged.total > 0 and staged.step <= staged.total
            done = c.wait_for(lambda e: isinstance(e, ResultDownloaded | Error)
                              and e.job == job, 240)  # fmt: skip
            assert isinstance(done, ResultDownloaded), (done, s.log())
            assert done.manifest.metrics["model_set"]["id"] == "if-sd"
            assert reply_to(c, c.send(ListModels())).get("if-sd").present
            listing = reply_to(c, c.send(ListJobs()))
            assert [j.models for j in listing.jobs if j.job == job] == ["if-sd"]

            # --- clearing the token
            cleared = reply_to(c, c.send(SetToken(token="")))
            assert not cleared.set and not token_file.exists()
            assert reply_to(c, c.ping()).TYPE == "pong"
        assert TOKEN not in s.log_path.read_text()
    finally:
        hub.stop()
