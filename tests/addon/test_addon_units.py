"""The add-on's bpy-free modules (session, history, backend start), imported as a package without
Blender: the add-on's ``__init__`` imports nothing of bpy at module level."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def load(name: str):
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    mod = importlib.import_module(f"blender_addon.{name}")
    assert "bpy" not in sys.modules or name != "session"
    return mod


session = load("session")
history = load("history")
backend_process = load("backend_process")


def test_history_survives_a_restart_and_a_corrupt_file(tmp_path):
    path = tmp_path / "history.json"
    h = history.History(path)
    h.add(history.Entry(job="a", prompt="a chair", state="done", result_dir="/r/a"))
    h.add(history.Entry(job="b", prompt="a crate", placement=[1.0, 2.0, 3.0, 0.5]))
    h.update("b", state="running")
    again = history.History(path)
    assert [e.job for e in again.entries] == ["b", "a"]
    assert again.active().job == "b" and again.get("b").placement == [1.0, 2.0, 3.0, 0.5]
    again.update("b", state="cancelled")
    assert history.History(path).active() is None
    assert not list(tmp_path.glob(".*tmp"))  # atomic writes leave nothing behind
    path.write_text("{not json")
    broken = history.History(path)
    assert broken.entries == [] and path.with_suffix(".json.bad").is_file()
    broken.add(history.Entry(job="c", prompt="a lamp"))
    assert json.loads(path.read_text())["entries"][0]["job"] == "c"


def test_job_view_progress_text():
    v = session.JobView(job="j", prompt="p", state="queued", queue_position=2)
    assert v.progress_text() == "Queued (2 ahead)"
    v.state, v.stage, v.step, v.total, v.eta_s = "running", "geometry", 30, 120, 125.0
    assert v.progress_text() == "geometry 30/120, 2 min 05 s left"
    assert v.fraction == pytest.approx(0.25)
    v.state, v.message = "failed", "out of memory"
    assert v.progress_text() == "Failed: out of memory" and v.terminal
    assert session.format_duration(3 * 3600 + 60) == "3 h 01 min"


def test_missing_keys_say_what_to_do(tmp_path):
    settings = session.ConnectionSettings("tcp://127.0.0.1:5757", key_dir=str(tmp_path))
    with pytest.raises(session.SessionError, match="Start the backend once"):
        settings.key_files()
    assert session.ConnectionSettings("tcp://x:1", use_curve=False).key_files() is None


def test_commands_need_a_connection():
    s = session.Session(session.ConnectionSettings("tcp://127.0.0.1:1", use_curve=False))
    with pytest.raises(session.SessionError, match="press Connect"):
        s.submit(session.JobRequest(prompt="a chair"))
    with pytest.raises(session.SessionError, match="press Connect"):
        s.cancel()
    assert s.poll() == []


def test_bad_address_is_a_clear_error():
    s = session.Session(session.ConnectionSettings("not an address", use_curve=False))
    with pytest.raises(session.SessionError, match="Check the backend address"):
        s.connect()


def test_backend_command_gets_the_address():
    argv = backend_process.build_command("stabledreamer serve --sd-model /m", "tcp://127.0.0.1:9")
    assert argv == ["stabledreamer", "serve", "--sd-model", "/m", "--bind", "tcp://127.0.0.1:9"]
    assert backend_process.build_command("x --bind=tcp://a:1", "tcp://b:2") == [
        "x",
        "--bind=tcp://a:1",
    ]
    with pytest.raises(backend_process.BackendStartError, match="No backend command"):
        backend_process.build_command("  ", "tcp://127.0.0.1:9")


def test_a_backend_that_cannot_start_says_so(tmp_path):
    with pytest.raises(backend_process.BackendStartError, match="full path"):
        backend_process.start("/nonexistent/stabledreamer serve", "tcp://127.0.0.1:9",
                              tmp_path / "backend.log")  # fmt: skip


def test_incompatible_backend_is_refused_with_the_fix():
    from stabledreamer_protocol import Hello

    s = session.Session(session.ConnectionSettings("tcp://127.0.0.1:1", use_curve=False))
    s.connect()
    s._hello_id = "h1"
    out: list = []
    s._handle(Hello(re="h1", protocol="2.0", software="future backend"), out)
    assert s.state == "disconnected" and s.status.startswith("Incompatible backend")
    notice = out[-1]
    assert notice.level == "ERROR" and "protocol 2.0" in notice.text
    assert "matching versions" in notice.text


def test_history_keeps_runs_another_blender_added(tmp_path):
    path = tmp_path / "history.json"
    a, b = history.History(path), history.History(path)
    a.add(history.Entry(job="a", prompt="from A", created=1.0))
    b.add(history.Entry(job="b", prompt="from B", created=2.0))
    a.update("a", state="done", result_dir="/r/a")
    assert [e.job for e in history.History(path).entries] == ["b", "a"]
    a.remove("b")
    assert [e.job for e in history.History(path).entries] == ["a"]
    # finished but never downloaded: still to follow after a restart
    assert history.Entry(job="c", prompt="p", state="done").active
    assert not history.Entry(job="c", prompt="p", state="done", result_dir="/r").active


def _followed_session():
    s = session.Session(session.ConnectionSettings("tcp://127.0.0.1:1", use_curve=False))
    s.connect()
    s.state = "connected"
    s.job = session.JobView(job="j1", prompt="a chair", acknowledged=True)
    return s


def test_a_result_is_delivered_once():
    from stabledreamer_protocol import JobState, Result
    from stabledreamer_protocol.client import ResultDownloaded

    s = _followed_session()
    out: list = []
    s._handle(JobState(job="j1", state="done"), out)
    got = ResultDownloaded(job="j1", files={"mesh.glb": b"x"}, manifest=Result(job="j1"))
    s._handle(got, out)
    s._handle(got, out)  # a download restarted across a reconnect delivers a second copy
    assert [type(u).__name__ for u in out].count("ResultUpdate") == 1


def test_a_failed_download_frees_the_panel_and_can_be_retried():
    from stabledreamer_protocol import Error, JobState

    s = _followed_session()
    out: list = []
    s._handle(JobState(job="j1", state="done"), out)
    assert s.busy  # waiting for the result
    s._handle(Error(job="j1", code="checksum", message="chunk 3 of mesh.glb corrupt"), out)
    assert s.job.download_failed and not s.busy
    assert "download failed" in s.job.progress_text()
    with pytest.raises(session.SessionError, match="not reachable"):
        s.retry_download()  # nobody listens on this port: the send fails, the offer stays
    assert s.job.download_failed
    s.client.attach = lambda job, points=None: "m1"
    s.retry_download()
    assert not s.job.download_failed and s.busy


@pytest.mark.parametrize("code", ["forbidden", "unknown_job"])
def test_a_job_of_another_key_ends_the_view_with_the_reason(code):
    from stabledreamer_protocol import Error, JobState

    s = _followed_session()
    out: list = []
    s._handle(JobState(job="j1", state="running"), out)
    s._handle(Error(job="j1", code=code, message="job 'j1' belongs to another client key"), out)
    assert s.job.state == "failed" and "another client key" in s.job.message
    assert not s.busy


def test_the_queue_lists_selects_and_cancels():
    from stabledreamer_protocol import Hello, JobInfo, Jobs, JobState

    s = session.Session(session.ConnectionSettings("tcp://127.0.0.1:1", use_curve=False))
    s.connect()
    s.state, s.server = "connected", Hello(protocol="1.4")
    attached, cancelled = [], []
    s.client.attach = lambda job, points=None: attached.append(job) or "m1"
    s.client.cancel = lambda job: cancelled.append(job) or "m2"
    for j in ("a", "b", "c"):
        s._add(session.JobView(job=j, prompt=f"prompt {j}", acknowledged=True))
    assert list(s.jobs) == ["a", "b", "c"] and s.selected == "a"  # the going job stays shown
    s._list_id = "L"
    out: list = []
    listing = Jobs(
        re="L",
        jobs=[
            JobInfo(job="b", state="queued", queue_position=0),
            JobInfo(job="x", state="running", prompt="from another Blender, same key"),
            JobInfo(job="y", state="queued", mine=False),  # an operator sees other keys' jobs
        ],
        others_active=2,
    )
    s._handle(listing, out)
    assert s.jobs["b"].queue_position == 0 and s.others_active == 2
    assert "x" in s.jobs and "y" not in s.jobs and attached == ["x"]
    s.cancel("c")  # the last of the queue, not the shown one
    assert cancelled == ["c"] and s.jobs["c"].message == "cancelling"
    s._handle(JobState(job="c", state="cancelled"), out)
    s._handle(JobState(job="a", state="failed", message="boom"), out)
    s._handle(JobState(job="b", state="running"), out)
    s._advance()
    assert s.selected == "b"  # the shown job ended: the one that runs now is shown
    # ETA: the backend's while it runs; while queued, from the durations this session saw
    s.jobs["b"].eta_s = 30.0
    d = session.JobView(job="d", prompt="p", acknowledged=True)
    s._add(d)
    s._handle(JobState(job="d", state="queued", queue_position=1), out)
    assert s.eta(s.jobs["b"]) == 30.0 and s.eta(d) is None  # nothing seen from start to end
    s.jobs["x"].started, s.jobs["x"].ended = 100.0, 150.0  # one job took 50 s
    assert s.eta(d) == pytest.approx(30.0 + 2 * 50.0)  # the running one, one ahead, itself
    assert any("'prompt a' failed: boom" in n.text for n in out if hasattr(n, "text"))
    with pytest.raises(session.SessionError, match="No job is running"):
        s.cancel("c")
    # a 1.2 backend lists every job without 'mine': nothing is adopted from it
    s.server = Hello(protocol="1.2")
    s._handle(Jobs(re="L", jobs=[JobInfo(job="z", state="running")]), out)
    assert "z" not in s.jobs


def test_a_follow_up_needs_a_backend_that_has_them():
    from stabledreamer_protocol import Hello

    s = session.Session(session.ConnectionSettings("tcp://127.0.0.1:1", use_curve=False))
    s.connect()
    s.state, s.server = "connected", Hello(protocol="1.2", presets=["standard"])
    req = session.JobRequest(prompt="", parent="p", mode="continue", steps=3)
    with pytest.raises(session.SessionError, match="update it"):
        s.submit(req)
    with pytest.raises(session.SessionError, match="prompt is empty"):
        s.submit(session.JobRequest(prompt=" ", parent="p", mode="refine"))


def test_models_link_keeps_the_sets_and_refuses_a_token_without_curve():
    from stabledreamer_protocol import DownloadState, Error, Hello, Models, ModelSetInfo

    models_link = load("models_link")
    s = _followed_session()  # use_curve=False
    s.server = Hello(features=["models"])
    sent = []
    s.client.send = lambda msg: sent.append(msg) or msg.id
    link = models_link.of(s)
    assert link is models_link.of(s) and link.supported
    out: list = []
    missing = ModelSetInfo(id="sd-only", title="SD only", bytes_missing=2_600_000_000,
                           models=[], present=False)  # fmt: skip
    s._handle(Models(sets=[missing], default="if-sd"), out)
    assert link.listing.default == "if-sd" and link.resolve("backend") == "if-sd"
    assert link.check_generate("sd-only").set_id == "sd-only"
    assert link.check_generate("if-sd") is None  # not listed: the backend decides
    with pytest.raises(session.SessionError, match="encrypted link"):
        link.set_token("hf_x")
    assert not any(m.TYPE == "set_token" for m in sent)
    # a refusal of its own request becomes a notice and is consumed; a job's is not
    rid = link.refresh()
    s._handle(Error(re=rid, code="bad_field", message="nope"), out)
    assert link.error == "nope" and out[-1].level == "ERROR"
    s.job.acknowledged = False  # a refused submit
    s._handle(Error(job="j1", code="models_missing", message="model set 'sd-only' is not "
                    "downloaded: missing x"), out)  # fmt: skip
    assert link.blocked.set_id == "sd-only" and s.job.state == "failed"
    # a download's end asks for the list again
    s._handle(DownloadState(set="sd-only", state="running", bytes_done=5, bytes_total=10), out)
    assert link.downloading("sd-only").fraction == 0.5
    n = len(sent)
    s._handle(DownloadState(set="sd-only", state="failed", code="gated", message="gated",
                            link="https://hub/x"), out)  # fmt: skip
    assert link.downloading("sd-only") is None and "https://hub/x" in link.error
    assert [m.TYPE for m in sent[n:]] == ["list_models"]
    # a backend without the feature: nothing is sent
    s.server = Hello(features=[])
    with pytest.raises(session.SessionError, match="update it"):
        link.download("sd-only")
