"""The add-on against a real backend: ``stabledreamer serve`` with tiny random models (CURVE on),
the extension installed into bpy, its operators pressed and its poll function driven by hand
(Blender's timers do not run in background mode).

One Blender process plays the whole session in order: connect, a refused job, a text job to the
end (live preview, debug image, the mesh imported at the 3D cursor, history), a job started from
a selected blockout that is re-attached after reloading the add-on, survives opening another
file and the backend being killed and restarted under it, and is then cancelled. A second
process checks that no backend gives a clear error and that auto-start works.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

import pytest
from addon_helpers import ROOT, needs_bpy, run_blender

sys.path.insert(0, str(ROOT / "tests" / "server"))
from server_helpers import FAST_TEXT, Server, free_port, make_keys  # noqa: E402

from stabledreamer.guidance.tiny_models import save_tiny_models  # noqa: E402

pytestmark = needs_bpy

FAST = {**FAST_TEXT, "debug_every": 2}

SESSION = textwrap.dedent(
    r"""
    out["install"] = install()
    mod = importlib.import_module(ADDON)
    rt_mod = mod.runtime
    prefs = bpy.context.preferences.addons[ADDON].preferences
    prefs.endpoint = ARGS["endpoint"]
    prefs.key_dir = ARGS["keys"]
    prefs.auto_start = False
    prefs.update_rate = 30.0
    s = bpy.context.scene.stabledreamer
    notices = []

    def pump(until, timeout, what):
        deadline = time.monotonic() + timeout
        rt = rt_mod.get()
        seen = len(rt.messages)
        while time.monotonic() < deadline:
            rt_mod.poll()
            rt = rt_mod.get()
            notices.extend(rt.messages[seen:])
            seen = len(rt.messages)
            if until(rt):
                return True
            time.sleep(0.02)
        raise AssertionError(f"timed out waiting for {what}; notices {notices[-5:]}")

    def job_state(rt):
        return rt.session.job.state if rt.session and rt.session.job else None

    # --- connect
    out["connect"] = sorted(bpy.ops.stabledreamer.connect())
    pump(lambda rt: rt.session.connected, 30, "the handshake")
    out["status"] = rt_mod.get().status

    # --- refused before sending: an empty prompt, a huge one
    for text in ("   ", "x" * 5000):
        s.prompt = text
        try:
            bpy.ops.stabledreamer.generate()
            out.setdefault("bad_prompts", []).append("no error")
        except RuntimeError as e:
            out.setdefault("bad_prompts", []).append(str(e))

    # --- a job the backend refuses (a bad override): the panel says why
    s.prompt = "a red chair"
    s.overrides = json.dumps({"no_such_setting": 1})
    bpy.ops.stabledreamer.generate()
    pump(lambda rt: job_state(rt) == "failed", 30, "the refusal")
    out["refused"] = [n for n in notices if n[0] == "ERROR"]

    # --- a text job to the end, result at the 3D cursor
    bpy.context.scene.cursor.location = (1.0, 2.0, 0.5)
    s.preset = "preview"
    s.random_seed = False
    s.seed = 3
    s.steps_geometry = 3
    s.steps_detail = 2
    s.overrides = json.dumps(ARGS["fast"])
    s.import_gaussians = True
    # the artist is editing the default cube: the import must wait, and keep the selection
    cube0 = bpy.data.objects["Cube"]
    bpy.context.view_layer.objects.active = cube0
    cube0.select_set(True)
    bpy.ops.object.mode_set(mode="EDIT")
    out["generate"] = sorted(bpy.ops.stabledreamer.generate())
    previews = []

    def done(rt):
        obj = bpy.data.objects.get(mod.preview.OBJECT_NAME)
        if obj is not None and len(obj.data.vertices):
            names = sorted(a.name for a in obj.data.attributes if not a.name.startswith("."))
            previews.append((len(obj.data.vertices), names))
        return rt.session.job.imported or job_state(rt) in ("failed", "cancelled")

    pump(done, 240, "the first job")
    rt = rt_mod.get()
    out["waiting_in_edit_mode"] = [list(rt.pending_imports), "Red chair" in bpy.data.objects]
    bpy.ops.object.mode_set(mode="OBJECT")
    pump(lambda rt: not rt.pending_imports, 30, "the import after Edit Mode")
    out["selection_kept"] = [
        bpy.context.view_layer.objects.active.name,
        sorted(o.name for o in bpy.context.selected_objects),
    ]
    pv = mod.result_import._PREVIEWS  # icon ids are 0 without a GUI: check the pixels
    out["debug_tiles"] = [
        [label, list(pv[f"debug{i}"].image_size)] for i, (label, _) in enumerate(rt.debug_tiles)
    ]
    out["job1"] = {
        "state": job_state(rt),
        "progress_text": rt.session.job.progress_text(),
        "num_gaussians": rt.session.job.num_gaussians,
        "previews": previews[-1:] if previews else [],
        "n_previews": len(previews),
    }
    obj = bpy.data.objects.get("Red chair")
    out["imported"] = None if obj is None else {
        "type": obj.type,
        "location": list(obj.location),
        "collections": [c.name for c in obj.users_collection],
        "images": sorted(
            n.image.name for m in obj.data.materials if m and m.node_tree
            for n in m.node_tree.nodes if n.type == "TEX_IMAGE" and n.image
        ),
        "faces": len(obj.data.polygons),
    }
    preview_obj = bpy.data.objects.get(mod.preview.OBJECT_NAME)
    out["preview_hidden"] = preview_obj is not None and preview_obj.hide_viewport
    img = bpy.data.images.get("StableDreamer Debug")
    out["debug_image"] = None if img is None else list(img.size)
    hist = json.loads((rt.folder / "history.json").read_text())["entries"]
    out["history"] = [[e["prompt"], e["state"], bool(e["result_dir"])] for e in hist]
    out["result_files"] = sorted(p.name for p in (rt.folder / "results").glob("*/*"))
    splats = bpy.data.objects.get("Red chair Gaussians")
    metrics = json.loads(next((rt.folder / "results").glob("*/metrics.json")).read_text())
    out["splats"] = None if splats is None else {
        "n": len(splats.data.vertices),
        "expected": metrics["gaussians"],
        "location": list(splats.location),
        "collections": [c.name for c in splats.users_collection],
    }
    # File > Import > 3D Gaussians: the downloaded file, then a .ply that is not 3DGS
    ply = next((rt.folder / "results").glob("*/gaussians.ply"))
    out["import_op"] = sorted(bpy.ops.stabledreamer.import_gaussians(filepath=str(ply)))
    out["import_op_n"] = len(bpy.context.scene.objects["gaussians"].data.vertices)
    plain = rt.folder / "plain.ply"
    plain.write_text("ply\nformat ascii 1.0\nelement vertex 1\nproperty float x\n"
                     "property float y\nproperty float z\nend_header\n0 0 0\n")
    try:
        bpy.ops.stabledreamer.import_gaussians(filepath=str(plain))
        out["import_plain"] = "no error"
    except RuntimeError as e:
        out["import_plain"] = str(e)

    # history: recall the settings and import the result again
    s.prompt, s.seed = "something else", 0
    bpy.ops.stabledreamer.history_recall(job=hist[0]["job"])
    out["recalled"] = [s.prompt, s.seed, s.random_seed]
    bpy.ops.stabledreamer.history_import(job=hist[0]["job"])
    out["reimported"] = sorted(o.name for o in bpy.data.objects if o.name.startswith("Red chair"))

    # --- start from a selected blockout, reload the add-on mid-job, cancel
    bpy.ops.mesh.primitive_cube_add(size=0.5, location=(3.0, 0.0, 0.0))
    cube = bpy.context.active_object
    s.prompt = "a wooden crate"
    s.from_selected = True
    s.init_points = 500
    s.steps_geometry = 400
    out["generate2"] = sorted(bpy.ops.stabledreamer.generate())
    pump(lambda rt: job_state(rt) == "running" and rt.session.job.step > 0, 60, "job 2 to run")
    job2 = rt_mod.get().session.job.job
    entry = rt_mod.get().history.get(job2)
    out["placement"] = entry.placement
    pump(lambda rt: bpy.data.objects[mod.preview.OBJECT_NAME].location.x > 2.9, 30, "a preview")
    pobj = bpy.data.objects[mod.preview.OBJECT_NAME]
    out["preview_location"] = list(pobj.location)
    # the Gaussians start on the blockout's surface: in the unit frame, a cube of half-size
    # 0.8 / sqrt(3) (its corners at 80 % of the unit ball)
    co = np.empty(len(pobj.data.vertices) * 3, np.float32)
    pobj.data.vertices.foreach_get("co", co)
    half = np.abs(co.reshape(-1, 3)).max(axis=1)
    out["on_blockout"] = float(np.mean(np.abs(half - 0.8 / 3**0.5) < 0.05))

    # what Reload Scripts does: unregister and register again, the preferences kept
    import addon_utils
    addon_utils.disable(ADDON, default_set=False)
    out["timer_after_disable"] = bpy.app.timers.is_registered(rt_mod.poll)
    addon_utils.enable(ADDON, default_set=False)
    mod = importlib.import_module(ADDON)
    rt_mod = mod.runtime
    s = bpy.context.scene.stabledreamer
    pump(
        lambda rt: rt.session is not None and rt.session.connected and job_state(rt) == "running",
        60, "re-attaching after the reload",
    )
    out["reattached"] = rt_mod.get().session.job.job == job2
    # File > Open mid-job: the connection and the job stay; previews go to the new file
    saved = str(rt_mod.get().folder / "scene.blend")
    bpy.ops.wm.save_as_mainfile(filepath=saved)
    bpy.ops.wm.read_homefile(use_empty=True)
    out["preview_after_open"] = mod.preview.OBJECT_NAME in bpy.data.objects
    step = rt_mod.get().session.job.step
    pump(
        lambda rt: rt.session.job.step > step and mod.preview.OBJECT_NAME in bpy.data.objects,
        60, "progress and a preview after opening another file",
    )
    out["after_open"] = [rt_mod.get().session.connected, job_state(rt_mod.get())]
    s = bpy.context.scene.stabledreamer

    # --- the backend dies mid-job: noticed, then reconnected and re-attached once it is back
    import subprocess
    rt = rt_mod.get()
    rt.session.lost_after_s, rt.session.ping_interval_s = 3.0, 0.5
    os.kill(ARGS["server_pid"], 9)
    pump(lambda rt: rt.session.state == "lost", 30, "the lost connection")
    out["lost_status"] = rt.session.status
    with open(ARGS["server_log"], "ab") as log:
        server = subprocess.Popen(ARGS["server_cmd"], stdout=log, stderr=subprocess.STDOUT)
    try:
        pump(
            lambda rt: rt.session.connected and job_state(rt) == "running"
            and rt.session.job.step > 0,
            120, "reconnecting and the job resuming on the restarted backend",
        )
        out["resumed"] = rt_mod.get().session.job.job == job2
        out["cancel"] = sorted(bpy.ops.stabledreamer.cancel())
        pump(lambda rt: job_state(rt) == "cancelled", 60, "the cancel")
        out["history2"] = rt_mod.get().history.get(job2).state
        # --- a short job from the blockout to the end: the result takes the blockout's place
        s = bpy.context.scene.stabledreamer
        if "Crate blockout" not in bpy.data.objects:
            bpy.ops.mesh.primitive_cube_add(size=0.5, location=(-2.0, 1.0, 0.25))
            bpy.context.active_object.name = "Crate blockout"
        blockout = bpy.data.objects["Crate blockout"]
        bpy.context.view_layer.objects.active = blockout
        s.prompt, s.from_selected, s.init_points = "a small crate", True, 1000
        s.steps_geometry, s.steps_detail = 3, 2
        s.overrides = json.dumps(ARGS["fast"])
        out["generate3"] = sorted(bpy.ops.stabledreamer.generate())
        pump(lambda rt: rt.session.job.imported or job_state(rt) == "failed", 120, "job 3")
        crate = bpy.data.objects.get("Small crate")
        out["crate"] = None if crate is None else {
            "location": list(crate.location),
            "scale": list(crate.scale),
            "blockout_hidden": blockout.hide_get(),
        }
    finally:
        server.terminate()
        server.wait(30)
    out["notices"] = notices
    out["torch_loaded"] = "torch" in sys.modules
    bpy.ops.preferences.addon_disable(module=ADDON)
    save()
    """
)

NO_BACKEND = textwrap.dedent(
    r"""
    out["install"] = install()
    mod = importlib.import_module(ADDON)
    rt_mod = mod.runtime
    prefs = bpy.context.preferences.addons[ADDON].preferences
    prefs.endpoint = ARGS["endpoint"]
    prefs.key_dir = ARGS["keys"]
    prefs.auto_start = False
    try:
        bpy.ops.stabledreamer.generate()
        out["generate"] = "no error"
    except RuntimeError as e:  # an ERROR report raises in background mode
        out["generate"] = str(e)
    rt_mod.connect(timeout_s=1.0)
    t0 = time.monotonic()
    while time.monotonic() - t0 < 10 and not rt_mod.get().session.unreachable:
        rt_mod.poll()
        time.sleep(0.05)
    rt = rt_mod.get()
    out["unreachable"] = rt.session.unreachable
    out["state"] = rt.session.state
    out["messages"] = rt.messages
    calls = []

    class Layout:
        def __getattr__(self, name):
            def f(*a, **k):
                calls.append((name, [str(x) for x in a[:1]], k.get("text")))
                return Layout()
            return f

    mod.panel.STABLEDREAMER_PT_panel.draw(type("P", (), {"layout": Layout()})(), bpy.context)
    out["ops"] = [c[1][0] for c in calls if c[0] == "operator"]
    # auto-start: the next connect that finds nobody starts the backend command, then connects
    prefs.backend_command = ARGS["command"]
    prefs.auto_start = True
    rt_mod.connect(timeout_s=1.0)
    t0 = time.monotonic()
    while time.monotonic() - t0 < 90 and not rt_mod.get().session.connected:
        rt_mod.poll()
        time.sleep(0.05)
    out["auto_connected"] = rt_mod.get().session.connected
    out["auto_status"] = rt_mod.get().status
    proc = mod.backend_process.running()
    out["auto_pid"] = proc.pid if proc is not None else None
    mod.backend_process.stop_all()
    out["auto_exit"] = proc.poll() if proc is not None else None
    # missing key files: a clear error before any connection attempt
    prefs.key_dir = "/nonexistent/keys"
    try:
        bpy.ops.stabledreamer.connect()
        out["missing_keys"] = "no error"
    except RuntimeError as e:
        out["missing_keys"] = str(e)
    save()
    """
)


@pytest.fixture(scope="module")
def session_run(addon_zip, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("addon_backend")
    tiny = tmp / "tiny"
    save_tiny_models(tiny)
    keys = tmp / "keys"
    make_keys(keys)
    server = Server(
        tmp / "state", keys, tmp / "server.log",
        "--if-model", str(tiny / "if"), "--sd-model", str(tiny / "sd"),
    ).start()  # fmt: skip
    try:
        server.wait_ready()
        cmd = [sys.executable, "-m", "stabledreamer", "serve", "--bind", server.endpoint]
        cmd += ["--state", str(tmp / "state"), "--keys", str(keys)]
        cmd += ["--if-model", str(tiny / "if"), "--sd-model", str(tiny / "sd")]
        args = {
            "endpoint": server.endpoint,
            "keys": str(keys),
            "fast": FAST,
            "server_pid": server.proc.pid,
            "server_cmd": cmd,
            "server_log": str(tmp / "server2.log"),
        }
        try:
            out = run_blender(SESSION, addon_zip, tmp / "blender", args, timeout=420)
        except AssertionError as e:
            raise AssertionError(f"{e}\n--- server log ---\n{server.log()}") from None
    finally:
        if server.proc.poll() is None:
            server.signal(signal.SIGKILL)
        try:
            server.proc.wait(10)
        except subprocess.TimeoutExpired:
            pass
        server.stop()
    return out


def test_connects_and_shows_the_backend(session_run):
    assert session_run["connect"] == ["FINISHED"]
    assert session_run["status"].startswith("Connected: ") and "cpu" in session_run["status"]


def test_bad_prompts_are_refused_with_the_fix(session_run):
    empty, huge = session_run["bad_prompts"]
    assert "The prompt is empty" in empty
    assert "5,000 characters" in huge and "Shorten it" in huge


def test_refused_job_says_why(session_run):
    errors = " ".join(text for _level, text in session_run["refused"])
    assert "no_such_setting" in errors


def test_text_job_streams_and_imports_the_mesh(session_run):
    job = session_run["job1"]
    assert job["state"] == "done", session_run["notices"]
    assert job["n_previews"] >= 1
    n, names = job["previews"][0]
    assert n > 0 and {"color", "opacity", "position", "rot", "scale"} <= set(names)
    obj = session_run["imported"]
    assert obj is not None, session_run["notices"]
    assert obj["type"] == "MESH" and obj["faces"] > 0
    assert obj["location"] == pytest.approx([1.0, 2.0, 0.5])
    assert obj["collections"] == ["StableDreamer: Red chair"]
    assert obj["images"], "the imported material has no image texture"
    assert session_run["preview_hidden"] is True
    h, w = session_run["debug_image"][1], session_run["debug_image"][0]
    assert w > h > 0  # render | noisy | x0 side by side
    tiles = session_run["debug_tiles"]
    assert [label for label, _ in tiles] == ["render", "noisy input", "x0 estimate"]
    assert all(size == [w // 3, h] for _, size in tiles)  # small strips are not downsampled
    assert {"mesh.glb", "gaussians.ply", "metrics.json"} <= set(session_run["result_files"])


def test_import_waits_for_edit_mode_and_keeps_the_selection(session_run):
    pending, imported = session_run["waiting_in_edit_mode"]
    assert len(pending) == 1 and imported is False
    assert session_run["selection_kept"] == ["Cube", ["Cube"]]


def test_result_gaussians_are_imported_too(session_run):
    splats = session_run["splats"]
    assert splats is not None, session_run["notices"]
    assert splats["n"] == splats["expected"] > 0
    assert splats["location"] == pytest.approx([1.0, 2.0, 0.5])
    assert splats["collections"] == ["StableDreamer: Red chair"]
    assert session_run["import_op"] == ["FINISHED"]
    assert session_run["import_op_n"] == splats["expected"]
    assert "not a 3D Gaussian Splatting file" in session_run["import_plain"]


def test_history_records_recalls_and_reimports(session_run):
    hist = session_run["history"]
    assert hist[-1] == ["a red chair", "failed", False]  # the refused one, oldest
    assert hist[-2] == ["a red chair", "done", True]
    assert session_run["recalled"] == ["a red chair", 3, False]
    assert session_run["reimported"] == ["Red chair", "Red chair Gaussians", "Red chair.001"]


def test_start_from_selected_places_the_preview_on_the_blockout(session_run):
    x, y, z, scale = session_run["placement"]
    assert [x, y, z] == pytest.approx([3.0, 0.0, 0.0], abs=1e-3)
    # the cube's corner radius (0.25 * sqrt 3) fills 80 % of the unit ball
    assert scale == pytest.approx(0.25 * 3**0.5 / 0.8, rel=0.02)
    assert session_run["preview_location"] == pytest.approx([3.0, 0.0, 0.0], abs=1e-3)
    assert session_run["on_blockout"] > 0.9  # a ball initialisation would give ~0


def test_result_takes_the_blockouts_place(session_run):
    crate = session_run["crate"]
    assert crate is not None, session_run["notices"][-5:]
    assert crate["location"] == pytest.approx([-2.0, 1.0, 0.25], abs=1e-3)
    assert crate["scale"] == pytest.approx([0.25 * 3**0.5 / 0.8] * 3, rel=0.02)
    assert crate["blockout_hidden"] is True


def test_reload_and_file_open_keep_the_job(session_run):
    assert session_run["timer_after_disable"] is False
    assert session_run["reattached"] is True
    assert session_run["preview_after_open"] is False  # an empty file, then the next preview
    assert session_run["after_open"] == [True, "running"]


def test_lost_backend_reconnects_reattaches_and_cancel_stops_the_job(session_run):
    assert session_run["lost_status"].startswith("Connection lost")
    notices = [t for _lvl, t in session_run["notices"]]
    assert any("Lost the backend connection" in t and "keeps running" in t for t in notices)
    assert any(t.startswith("Reconnected: ") for t in notices)
    assert session_run["resumed"] is True
    assert session_run["cancel"] == ["FINISHED"]
    assert session_run["history2"] == "cancelled"


def test_no_torch_in_blender(session_run):
    assert session_run["torch_loaded"] is False


def test_no_backend_gives_clear_errors(addon_zip, tmp_path):
    keys = tmp_path / "keys"
    make_keys(keys)
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    command = f"{sys.executable} -m stabledreamer serve --keys {keys} --state {tmp_path / 'state'}"
    args = {"endpoint": endpoint, "keys": str(keys), "command": command}
    out = run_blender(NO_BACKEND, addon_zip, tmp_path / "blender", args, timeout=120)
    assert "press Connect" in out["generate"]
    assert out["unreachable"] is True and out["state"] == "disconnected"
    assert any("No backend answered" in t for _lvl, t in out["messages"]), out
    assert "stabledreamer.start_backend" in out["ops"]
    assert out["auto_connected"] is True and out["auto_status"].startswith("Connected")
    assert out["auto_pid"] and out["auto_exit"] is not None  # stopped on request
    assert "missing" in out["missing_keys"] and "Start the backend once" in out["missing_keys"]
