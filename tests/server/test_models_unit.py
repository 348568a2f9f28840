"""The service's model part without a socket: what a waiting job becomes when its download ends
(runs, or fails naming why and the licence page), a job resumed after a restart, who may cancel
a download or set the token. Downloads are stood in for; the wire test runs the real ones."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from stabledreamer.models.errors import GatedModelError, NoNetworkError
from stabledreamer.server.delivery import Delivery, Peer
from stabledreamer.server.jobs import JobRecord
from stabledreamer.server.models_service import WAITING_STAGE, ModelsService, reason
from stabledreamer_protocol import (
    DEFAULT_LIMITS,
    CancelDownload,
    DownloadState,
    ProtocolError,
    SetToken,
    codec,
)


class FakeService:
    def __init__(self, curve: bool = True) -> None:
        self.cfg = SimpleNamespace(model_set="sd-only", curve=curve, model_ids=lambda: {})
        self.sent: list = []
        self.delivery = Delivery(lambda ident, frames: self.sent.append(frames) or True,
                                 DEFAULT_LIMITS, 1000)  # fmt: skip
        self.records: dict[str, JobRecord] = {}
        self.store = SimpleNamespace(get=self.records.get)
        self.states: list[tuple[str, str, str]] = []
        self.failed: list[tuple[str, str, str]] = []

    def _set_state(self, rec, state, message):
        rec.state, rec.message = state, message
        self.states.append((rec.job, state, message))

    def _fail(self, rec, code, message):
        rec.state = "failed"
        self.failed.append((rec.job, code, message))

    def decoded(self):
        return [codec.decode([bytes(f) for f in frames]) for frames in self.sent]


@pytest.fixture
def svc(monkeypatch):
    s = FakeService()
    m = ModelsService(s)
    present = {"sd-only": False}
    monkeypatch.setattr(
        m, "status",
        lambda set_id: SimpleNamespace(set_id=set_id, present=present[set_id],
                                       bytes_missing=100, missing_repos=["sd2/x"]),
    )  # fmt: skip
    started = []

    def start(set_id, owner, bytes_missing=0):  # no thread: the test plays the download
        from stabledreamer.server.models_service import SetDownload

        dl = m.downloads.get(set_id)
        if dl is None or not dl.running:
            dl = m.downloads[set_id] = SetDownload(
                set_id, owner, DownloadState(set=set_id, state="running", bytes_total=100)
            )
            started.append(set_id)
        return dl

    monkeypatch.setattr(m, "start", start)
    yield s, m, present, started
    m.close()


def waiting_job(job: str, stage: str = "") -> JobRecord:
    return JobRecord(job=job, seq=1, digest="", kind="generate", preset="preview", seed=0,
                     model_set="sd-only", wait_models=True, stage=stage)  # fmt: skip


def test_waiting_jobs_start_when_the_set_is_there(svc):
    s, m, present, started = svc
    a, b = waiting_job("a"), waiting_job("b")
    s.records.update(a=a, b=b)
    assert m.holds(a) and m.holds(b) and started == ["sd-only"]  # one download for both
    assert a.stage == WAITING_STAGE and "downloading" in s.states[0][2]
    m._post("sd-only", "progress", SimpleNamespace(
        bytes_done=40, bytes_total=100, files_done=1, files_total=3, rate_bps=10.0, eta_s=6.0,
        elapsed_s=4.0, repo_id="sd2/x"))  # fmt: skip
    m.pump()
    assert m.downloads["sd-only"].state.bytes_done == 40
    b.state = "cancelled"  # cancelled while waiting: left alone
    present["sd-only"] = True
    m._post("sd-only", "done", None)
    m.pump()
    assert m.downloads["sd-only"].state.state == "done"
    assert not m.holds(a) and a.stage == "" and ("a", "queued", "") in s.states
    assert b.state == "cancelled" and not s.failed


def test_a_failed_download_fails_its_waiting_jobs_with_the_reason(svc):
    s, m, present, _ = svc
    a = waiting_job("a")
    s.records["a"] = a
    assert m.holds(a)
    page = "https://huggingface.co/DeepFloyd/IF-I-XL-v1.0"
    gated = GatedModelError("DeepFloyd/IF-I-XL-v1.0 is gated: accept its licence", repo_id="x",
                            page=page)  # fmt: skip
    m._post("sd-only", "failed", gated)
    m.pump()
    end = m.downloads["sd-only"].state
    assert (end.state, end.code, end.link) == ("failed", "gated", page)
    [(job, code, message)] = s.failed
    assert job == "a" and code == "models_missing" and page in message
    assert reason(NoNetworkError("cannot reach the model hub"))[0] == "no_network"
    assert reason(ValueError("bug"))[0] == "internal"


def test_a_job_resumed_after_a_restart_waits_again_or_starts(svc):
    s, m, present, started = svc
    old = waiting_job("old", stage=WAITING_STAGE)
    assert m.holds(old) and started == ["sd-only"]
    present["sd-only"] = True
    back = waiting_job("back", stage=WAITING_STAGE)
    assert not m.holds(back) and back.stage == ""


def test_cancel_and_token_need_the_right_key(svc):
    s, m, present, _ = svc
    m.start("sd-only", "alice-key")
    bob = s.delivery.peer(b"bob")
    bob.owner, bob.operator = "bob-key", False
    with pytest.raises(ProtocolError) as e:
        m.on_cancel(bob, CancelDownload(set="sd-only"))
    assert e.value.code == "forbidden"
    alice = s.delivery.peer(b"alice")
    alice.owner = "alice-key"
    m.on_cancel(alice, CancelDownload(set="sd-only"))
    assert m.downloads["sd-only"].cancel.is_set()
    assert s.decoded()[-1].message == "cancelling"
    with pytest.raises(ProtocolError) as e:
        m.on_set_token(bob, SetToken(token="hf_x"))
    assert e.value.code == "forbidden" and "hf_x" not in e.value.message
    with pytest.raises(ProtocolError) as e:
        m.on_cancel(alice, CancelDownload(set="nope"))
    assert e.value.code == "bad_field"


def test_no_token_without_curve():
    s = FakeService(curve=False)
    m = ModelsService(s)
    try:
        with pytest.raises(ProtocolError) as e:
            m.on_set_token(Peer(b"x", operator=True), SetToken(token="hf_secret"))
        assert e.value.code == "curve_required" and "hf_secret" not in str(e.value)
    finally:
        m.close()
