"""The artist's iteration loop in the add-on against a real backend (tiny random models, CURVE
on): three prompts queued while the first runs, a reload that re-attaches them all, the middle
one cancelled, another client's job counted but not shown, variations of 3 side by side in one
collection, and a finished run refined with a new prompt and continued with more steps, each
placed beside its parent and remembered in the history. One Blender process, driven by hand
(timers do not run in background mode)."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

import pytest
from addon_helpers import ROOT, needs_bpy, run_blender

sys.path.insert(0, str(ROOT / "tests" / "server"))
from server_helpers import FAST_TEXT, Server, make_keys  # noqa: E402

from stabledreamer.guidance.tiny_models import save_tiny_models  # noqa: E402

pytestmark = needs_bpy

FAST = {**FAST_TEXT, "geometry.steps": 1, "detail.steps": 1, "debug_every": 1}
# (with 300 initial points instead of FAST_TEXT's 1000 no pixel reaches alpha 0.5: no mesh)

SCRIPT = textwrap.dedent(
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
        seen = len(rt_mod.get().messages)
        while time.monotonic() < deadline:
            rt_mod.poll()
            rt = rt_mod.get()
            notices.extend(rt.messages[seen:])
            seen = len(rt.messages)
            if until(rt):
                return True
            time.sleep(0.02)
        raise AssertionError(f"timed out waiting for {what}; notices {notices[-6:]}")

    def views(rt, jobs):
        return [rt.session.jobs.get(j) for j in jobs]

    def bounds(obj):
        from mathutils import Vector
        c = [obj.matrix_world @ Vector(v) for v in obj.bound_box]
        return [min(p.x for p in c), max(p.x for p in c)]

    shown = []  # (job drawn in the preview object, the job selected then)

    def spy_previews(mod):
        real = mod.runtime.show_preview

        def show(rt, update):
            shown.append((update.job, rt.session.selected))
            return real(rt, update)

        mod.runtime.show_preview = show

    spy_previews(mod)
    bpy.ops.stabledreamer.connect()
    pump(lambda rt: rt.session.connected, 30, "the handshake")
    s.preset, s.random_seed, s.overrides = "preview", False, json.dumps(ARGS["fast"])

    # --- three prompts: Generate while a job runs adds to the queue
    for i, prompt in enumerate(ARGS["prompts"]):
        s.prompt, s.seed = prompt, 10 + i
        out.setdefault("generate", []).append(sorted(bpy.ops.stabledreamer.generate()))
    rt = rt_mod.get()
    queue = list(rt.session.jobs)
    out["queued"] = len(queue)
    # another client (its own key) queues a job behind them: counted, never listed
    from stabledreamer_protocol.client import Client
    other = Client(ARGS["endpoint"], client_secret=ARGS["alice_secret"],
                   server_public=ARGS["server_public"]).connect()
    other.handshake(timeout_s=10)
    theirs = other.submit("their chair", preset="preview", overrides=ARGS["fast"])

    # --- reloading the add-on re-attaches every queued or running job
    import addon_utils
    addon_utils.disable(ADDON, default_set=False)
    addon_utils.enable(ADDON, default_set=False)
    mod = importlib.import_module(ADDON)
    rt_mod = mod.runtime
    spy_previews(mod)
    s = bpy.context.scene.stabledreamer
    pump(lambda rt: rt.session is not None and rt.session.connected
         and set(queue) <= set(rt.session.jobs), 60, "re-attaching the queue")
    pump(lambda rt: rt.session.others_active == 1
         and all(v.acknowledged for v in views(rt, queue)), 30, "the listing")
    rt = rt_mod.get()
    out["reattached"] = [j in rt.session.jobs for j in queue]
    out["others_active"] = rt.session.others_active
    out["theirs_listed"] = theirs in rt.session.jobs
    out["positions"] = [(v.state, v.queue_position) for v in views(rt, queue)]
    other.cancel(theirs)
    other.close()
    # the panel lists the queue: a select and a cancel button per job, the others counted
    calls = []

    class Layout:
        def __getattr__(self, name):
            def f(*a, **k):
                calls.append((name, [str(x) for x in a[:1]], k.get("text")))
                return Layout()
            return f

    mod.panel.STABLEDREAMER_PT_panel.draw(type("P", (), {"layout": Layout()})(), bpy.context)
    ops = [c[1][0] for c in calls if c[0] == "operator"]
    out["panel"] = {
        "select": ops.count("stabledreamer.select_job"),
        "cancel": ops.count("stabledreamer.cancel"),
        "generate_text": [c[2] for c in calls if c[1][:1] == ["stabledreamer.generate"]],
        "labels": [c[2] for c in calls if c[0] == "label" and c[2]],
    }

    # --- cancel the middle job of the queue; the others finish
    out["cancel"] = sorted(bpy.ops.stabledreamer.cancel(job=queue[1]))
    pump(lambda rt: rt.session.jobs[queue[1]].state == "cancelled", 30, "the cancel")
    # selecting the waiting job shows it (its preview once it runs)
    bpy.ops.stabledreamer.select_job(job=queue[2])
    out["selected"] = rt_mod.get().session.selected == queue[2]
    pump(lambda rt: all(v.settled for v in views(rt, queue)), 240, "the queue")
    rt = rt_mod.get()
    out["queue_states"] = [v.state for v in views(rt, queue)]
    out["queue_imported"] = [v.imported for v in views(rt, queue)]
    out["objects"] = sorted(o.name for o in bpy.data.objects if o.type == "MESH")

    # --- variations of 3: one collection, named with prompt and seed, side by side
    s.prompt, s.seed, s.variations = "a toy robot", 20, 3
    out["variations_op"] = sorted(bpy.ops.stabledreamer.generate())
    s.variations = 1
    rt = rt_mod.get()
    var = [j for j in rt.session.jobs if j not in queue]
    pump(lambda rt: all(rt.session.jobs[j].settled for j in var), 300, "the variations")
    robots = sorted((o for o in bpy.data.objects if o.name.startswith("Toy robot (seed")
                     and "Gaussians" not in o.name), key=lambda o: o.location.x)
    bpy.context.view_layer.update()
    out["variations"] = [
        {"name": o.name, "collections": [c.name for c in o.users_collection],
         "x": bounds(o)} for o in robots
    ]
    out["variation_seeds"] = [rt.history.get(j).seed for j in var]

    # --- refine the selected imported result with a new prompt; continue another from history
    chair = bpy.data.objects["Red chair"]
    for o in bpy.context.selected_objects:
        o.select_set(False)
    chair.select_set(True)
    bpy.context.view_layer.objects.active = chair
    out["refine"] = sorted(bpy.ops.stabledreamer.refine(prompt="a golden chair", negative="rust"))
    out["continue"] = sorted(bpy.ops.stabledreamer.continue_run(job=queue[2], steps=2))
    rt = rt_mod.get()
    follow = [j for j in rt.session.jobs if j not in queue and j not in var]
    pump(lambda rt: all(rt.session.jobs[j].settled for j in follow), 240, "refine and continue")
    rt = rt_mod.get()
    out["follow"] = []
    for j in follow:
        e = rt.history.get(j)
        metrics = json.loads((rt.folder / "results" / j / "metrics.json").read_text())
        obj = bpy.data.objects.get(e.object_name)
        out["follow"].append({
            "state": e.state, "parent": e.parent, "mode": e.mode, "prompt": e.prompt,
            "label": e.label(), "object": e.object_name,
            "x": bounds(obj) if obj else None,
            "metrics": [metrics.get("mode"), metrics.get("parent"), metrics.get("steps"),
                        metrics.get("prompt")],
        })
    bpy.context.view_layer.update()
    out["parents_x"] = {j: bounds(bpy.data.objects[rt.history.get(j).object_name])
                        for j in (queue[0], queue[2])}
    out["queue_jobs"] = queue
    out["shown"] = shown
    out["notices"] = notices
    out["torch_loaded"] = "torch" in sys.modules
    bpy.ops.preferences.addon_disable(module=ADDON)
    save()
    """
)

PROMPTS = ["a red chair", "a blue box", "a green cone"]


@pytest.fixture(scope="module")
def queue_run(addon_zip, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("addon_queue")
    tiny = tmp / "tiny"
    save_tiny_models(tiny)
    keys = tmp / "keys"
    make_keys(keys, "alice")
    server = Server(
        tmp / "state", keys, tmp / "server.log",
        "--if-model", str(tiny / "if"), "--sd-model", str(tiny / "sd"),
    ).start()  # fmt: skip
    try:
        server.wait_ready()
        args = {
            "endpoint": server.endpoint,
            "keys": str(keys),
            "fast": FAST,
            "prompts": PROMPTS,
            "alice_secret": str(keys / "alice.key_secret"),
            "server_public": str(keys / "server.key"),
        }
        try:
            out = run_blender(SCRIPT, addon_zip, tmp / "blender", args, timeout=600)
        except AssertionError as e:
            raise AssertionError(f"{e}\n--- server log ---\n{server.log()}") from None
    finally:
        if server.proc.poll() is None:
            server.signal(signal.SIGTERM)
        try:
            server.proc.wait(20)
        except subprocess.TimeoutExpired:
            pass
        server.stop()
    return out


def test_generate_while_running_queues_and_reload_reattaches_all(queue_run):
    assert queue_run["generate"] == [["FINISHED"]] * 3 and queue_run["queued"] == 3
    assert queue_run["reattached"] == [True, True, True]
    states = [st for st, _ in queue_run["positions"]]
    assert states[0] in ("queued", "running") and states[1:] == ["queued", "queued"]
    positions = [pos for _, pos in queue_run["positions"]][1:]
    assert positions == sorted(positions) and None not in positions


def test_other_clients_jobs_are_counted_not_shown(queue_run):
    assert queue_run["others_active"] == 1 and queue_run["theirs_listed"] is False
    panel = queue_run["panel"]
    assert panel["select"] == 3 and panel["cancel"] >= 4  # one per job + the main Cancel
    assert panel["generate_text"] == ["Add to Queue"]
    assert any("1 of other clients" in label for label in panel["labels"])


def test_cancel_the_middle_job(queue_run):
    assert queue_run["cancel"] == ["FINISHED"] and queue_run["selected"] is True
    assert queue_run["queue_states"] == ["done", "cancelled", "done"], queue_run["notices"][-6:]
    assert queue_run["queue_imported"][0] and queue_run["queue_imported"][2]
    assert {"Red chair", "Green cone"} <= set(queue_run["objects"])
    assert "Blue box" not in queue_run["objects"]


def test_variations_land_side_by_side_in_one_collection(queue_run):
    assert queue_run["variations_op"] == ["FINISHED"]
    assert sorted(queue_run["variation_seeds"]) == [20, 21, 22]
    var = queue_run["variations"]
    assert sorted(v["name"] for v in var) == [f"Toy robot (seed {s})" for s in (20, 21, 22)]
    assert len({tuple(v["collections"]) for v in var}) == 1
    assert var[0]["collections"][0].startswith("StableDreamer: Toy robot")
    for a, b in zip(var, var[1:], strict=False):  # sorted by x: no overlap
        assert a["x"][1] < b["x"][0]


def test_refine_and_continue_remember_their_parent(queue_run):
    queue = queue_run["queue_jobs"]
    refine, cont = queue_run["follow"]
    assert queue_run["refine"] == ["FINISHED"] and queue_run["continue"] == ["FINISHED"]
    assert (refine["state"], refine["mode"], refine["parent"]) == ("done", "refine", queue[0])
    assert refine["prompt"] == "a golden chair" and "refined: a golden chair" in refine["label"]
    assert refine["metrics"][:2] == ["refine", queue[0]] and refine["metrics"][3] == (
        "a golden chair"
    )
    assert (cont["state"], cont["mode"], cont["parent"]) == ("done", "continue", queue[2])
    assert cont["metrics"] == ["continue", queue[2], 2, "a green cone"]
    assert cont["prompt"] == "a green cone" and "+2 steps" in cont["label"]
    # each lands beside its parent, not on top of it
    assert refine["object"] == "Golden chair (refine)"
    assert refine["x"][0] > queue_run["parents_x"][queue[0]][1]
    assert cont["x"][0] > queue_run["parents_x"][queue[2]][1]


def test_the_preview_shows_the_selected_job_and_follows_the_queue(queue_run):
    shown = queue_run["shown"]
    assert shown and all(job == selected for job, selected in shown)
    assert len({job for job, _ in shown}) >= 3  # it moved on from job to job


def test_no_torch_in_blender(queue_run):
    assert queue_run["torch_loaded"] is False
