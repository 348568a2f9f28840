"""The Models panel against a real backend whose model downloads come from a local hub on
loopback (``HF_ENDPOINT``; a slow one, so progress and cancel can be seen), the extension
installed into bpy, its operators pressed and its poll function driven by hand (Blender's timers
do not run in background mode).

One Blender process: the panel lists the backend's sets with their licences; a Generate whose set
is missing is held back and the panel says what is missing; Download shows progress and Cancel
stops it; Download with "Generate When Downloaded" fetches the set and the job, waiting for it,
then runs; the history records the set and its licence; the token field is sent over CURVE and
cleared.
"""

from __future__ import annotations

import sys
import textwrap

from addon_helpers import ROOT, needs_bpy, run_blender

sys.path.insert(0, str(ROOT / "tests" / "server"))
from server_helpers import FAST_TEXT, Server, make_keys  # noqa: E402

from stabledreamer.models import sets  # noqa: E402
from stabledreamer.models.testing_hub import LocalHub  # noqa: E402

pytestmark = needs_bpy

TOKEN = "hf_panel_token_42"

SCRIPT = textwrap.dedent(
    r"""
    out["install"] = install()
    mod = importlib.import_module(ADDON)
    rt_mod = mod.runtime
    prefs = bpy.context.preferences.addons[ADDON].preferences
    prefs.endpoint, prefs.key_dir, prefs.auto_start, prefs.update_rate = (
        ARGS["endpoint"], ARGS["keys"], False, 30.0)
    s = bpy.context.scene.stabledreamer
    wm = bpy.context.window_manager
    notices = []

    def pump(until, timeout, what):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            rt_mod.poll()
            rt = rt_mod.get()
            if until(rt):
                notices.extend(rt.messages)
                return
            time.sleep(0.02)
        raise AssertionError(f"timed out waiting for {what}; notices {rt_mod.get().messages[-5:]}")

    class Layout:
        def __init__(self, calls):
            self.calls = calls
        def __getattr__(self, name):
            def f(*a, **k):
                args = a[1:2] if name == "prop" else a[:1]
                self.calls.append((name, [str(x) for x in args], k.get("text")))
                return Layout(self.calls)
            return f
        def __setattr__(self, name, value):
            object.__setattr__(self, name, value)

    def draw():
        calls = []
        mod.models_panel.STABLEDREAMER_PT_models.draw(
            type("P", (), {"layout": Layout(calls)})(), bpy.context)
        return calls

    link_of = lambda rt: mod.models_link.of(rt.session)
    out["draw_disconnected"] = draw()
    bpy.ops.stabledreamer.connect()
    pump(lambda rt: rt.session.connected and link_of(rt).listing is not None, 60, "the sets")
    link = link_of(rt_mod.get())
    out["sets"] = [x.id for x in link.listing.sets]
    out["default"] = link.listing.default
    bpy.context.scene.stabledreamer_models.model_set = "sd-only"
    out["draw_listed"] = draw()

    # --- a Generate whose set is missing: held back, the panel says what is missing
    s.prompt, s.preset, s.overrides = "a small lamp", "preview", json.dumps(ARGS["fast"])
    try:
        out["generate_blocked"] = sorted(bpy.ops.stabledreamer.generate())
    except RuntimeError as e:
        out["generate_blocked"] = str(e)
    out["blocked"] = link.blocked.text if link.blocked else None
    out["job_after_block"] = rt_mod.get().session.job is not None
    out["draw_blocked"] = draw()
    dialog = []  # the confirm dialog the held-back Generate opens (drawn into a stub)
    op = type("Op", (), {"layout": Layout(dialog), "set": "sd-only",
                         "_set_id": lambda self, context: "sd-only"})()
    mod.models_ops.STABLEDREAMER_OT_models_download.draw(op, bpy.context)
    out["dialog"] = dialog

    # --- Download shows progress; Cancel stops it
    bpy.ops.stabledreamer.models_download(set="sd-only")
    pump(lambda rt: (d := link.downloads.get("sd-only")) is not None and d.state == "running"
         and d.bytes_done > 0, 60, "download progress")
    out["draw_running"] = draw()
    out["running"] = link.downloads["sd-only"].body()
    bpy.ops.stabledreamer.models_cancel(set="sd-only")
    pump(lambda rt: link.downloads["sd-only"].state != "running", 30, "the cancel")
    out["after_cancel"] = link.downloads["sd-only"].body()

    # --- Download and Generate: the job waits for the download, then runs
    bpy.ops.stabledreamer.models_download(set="sd-only", generate=True)
    job = rt_mod.get().session.job
    out["job_submitted"] = job is not None
    waiting = []
    def done(rt):
        j = rt.session.job
        if j.state == "queued" and j.stage == "waiting_models":
            waiting.append(j.progress_text())
        return j.imported or j.state in ("failed", "cancelled")
    pump(done, 300, "the job")
    out["waiting"] = waiting[-3:]
    out["download_end"] = link.downloads["sd-only"].body()
    out["job_state"] = [rt_mod.get().session.job.state, rt_mod.get().session.job.message]
    pump(lambda rt: (i := link.info("sd-only")) is not None and i.present, 20, "the list")
    out["draw_present"] = draw()
    entry = rt_mod.get().history.get(job.job)
    out["history"] = {"models": entry.models, "metrics": entry.metrics, "label": entry.label()}

    # --- the token: sent over CURVE, then cleared from the add-on
    wm.stabledreamer_hub_token = ARGS["token"]
    out["token_op"] = sorted(bpy.ops.stabledreamer.models_token())
    out["token_field_after"] = wm.stabledreamer_hub_token
    pump(lambda rt: link.token is not None, 20, "the token state")
    out["token_text"] = link.token_text()
    out["notices"] = notices[-12:]
    out["torch"] = "torch" in sys.modules
    save()
    """
)


def test_models_panel_downloads_and_generates(addon_zip, tiny_models_fp16, tmp_path, monkeypatch):
    tiny = tiny_models_fp16
    hub = LocalHub({sets.SD_21_BASE: tiny / "sd"}, chunk_bytes=16 * 1024,
                   slow_s_per_chunk=0.05).start()  # fmt: skip
    token_file = tmp_path / "cfg" / "hf_token"
    monkeypatch.setenv("HF_ENDPOINT", hub.url)  # the server inherits this environment
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("STABLEDREAMER_HF_TOKEN_FILE", str(token_file))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    keys = tmp_path / "keys"
    make_keys(keys)
    server = Server(tmp_path / "state", keys, tmp_path / "server.log").start()
    try:
        server.wait_ready()
        args = {
            "endpoint": server.endpoint,
            "keys": str(keys),
            "fast": {**FAST_TEXT, "geometry.steps": 2, "detail.steps": 2},
            "token": TOKEN,
        }
        try:
            out = run_blender(SCRIPT, addon_zip, tmp_path / "blender", args, timeout=400)
        except AssertionError as e:
            raise AssertionError(f"{e}\n--- server log ---\n{server.log()}") from None
        token_stored = token_file.read_text().strip() if token_file.exists() else None
        server_log = server.log_path.read_text()
    finally:
        server.stop()
        hub.stop()

    texts = lambda calls: [c[2] for c in calls if c[2]]  # noqa: E731
    ops = lambda calls: [c[1][0] for c in calls if c[0] == "operator" and c[1]]  # noqa: E731
    assert "Connect to see" in " ".join(texts(out["draw_disconnected"]))
    assert set(out["sets"]) == set(sets.SET_IDS) and out["default"] == "if-sd"
    listed = " ".join(texts(out["draw_listed"]))
    assert "CreativeML Open RAIL++-M" in listed and "commercial use allowed" in listed
    assert "to download" in listed
    assert "stabledreamer.models_download" in ops(out["draw_listed"])
    # held back, saying what is missing, nothing submitted
    assert out["generate_blocked"] == ["CANCELLED"] and not out["job_after_block"]
    assert "Stable Diffusion 2.1-base" in out["blocked"] and "to download" in out["blocked"]
    assert "Generate needs these models first:" in texts(out["draw_blocked"])
    dialog = " ".join(texts(out["dialog"]))
    assert "Licence: CreativeML Open RAIL++-M" in dialog and "commercial use allowed" in dialog
    assert "to download on the backend" in dialog and "wm.url_open" in ops(out["dialog"])
    assert ["generate"] in [c[1] for c in out["dialog"] if c[0] == "prop"]
    # progress bar and cancel
    bars = [c for c in out["draw_running"] if c[0] == "progress"]
    assert bars and " of " in bars[0][2], out["draw_running"]
    assert "stabledreamer.models_cancel" in ops(out["draw_running"])
    assert 0 < out["running"]["bytes_done"] <= out["running"]["bytes_total"]
    assert out["after_cancel"]["state"] == "cancelled", out["after_cancel"]
    # download and generate: the job waited for its models, then ran and was imported
    assert out["job_submitted"] and out["job_state"][0] == "done", out
    assert out["download_end"]["state"] == "done"
    assert any(w.startswith("Waiting for its models") for w in out["waiting"]), out["waiting"]
    assert "All models are on the backend" in texts(out["draw_present"])
    hist = out["history"]
    assert hist["models"] == "sd-only" and hist["metrics"]["model_set"] == "sd-only"
    assert "commercial use allowed" in hist["metrics"]["licence"] and "[sd-only]" in hist["label"]
    # the token: sent, stored by the backend, cleared in the add-on, never shown or logged
    assert out["token_op"] == ["FINISHED"] and out["token_field_after"] == ""
    assert out["token_text"] == "Hub token: set (stored on the backend)"
    assert token_stored == TOKEN
    assert TOKEN not in out["_stdout"] and TOKEN not in server_log
    assert not out["torch"]
