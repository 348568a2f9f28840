"""The add-on's live state and its timer: one session, the history, applying updates to the scene.

:func:`poll` is the ``bpy.app.timers`` callback and is also called directly (Blender's timers do
not run in background mode, so the tests drive it by hand). It never blocks: it takes what the
session received, writes the newest preview into the preview object, the debug image into its
image, downloads into the user folder and the finished mesh into the scene.

State lives in this module (not in the .blend), so undo and opening another file keep the
connection and the jobs; the history file keeps them across a reload of the add-on (``register``
re-attaches the jobs that were queued or running). Only the selected job's previews and debug
strips reach the scene; every finished job's result is imported (variations side by side in one
collection, a refine or continue beside its parent).
"""

from __future__ import annotations

import contextlib
import traceback
from pathlib import Path

import bpy
from bpy.app.handlers import persistent

from . import backend_process, models_link, preview, result_import
from .history import Entry, History
from .prefs import DEFAULT_ENDPOINT, get_prefs

IDLE_INTERVAL_S = 0.5
MAX_MESSAGES = 20


class Runtime:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.history = History(folder / "history.json")
        self.session = None  # session.Session, made on first connect
        self.messages: list[tuple[str, str]] = []
        """(level, text), newest last: what the panel shows under the status line."""
        self.starting_backend = False
        self.auto_start_ok = False
        """Whether an unanswered connect may start a local backend (not when re-attaching at
        Blender's start: a stale history entry must not launch a backend every time)."""
        self.pending_imports: list[str] = []
        """Jobs whose result is downloaded but not imported yet (Edit Mode was on)."""
        self.debug_image: str = ""
        """Name of the image holding the newest debug strip (for the Image Editor)."""
        self.debug_tiles: list[tuple[str, int]] = []
        """(label, icon id) of its tiles, drawn in the panel."""
        self.shown_job: str | None = None
        """The job whose preview the scene shows (the session's selected one, once drawn)."""

    @property
    def status(self) -> str:
        if self.session is None:
            return "Not connected"
        return self.session.status

    def notify(self, level: str, text: str) -> None:
        self.messages.append((level, text))
        del self.messages[:-MAX_MESSAGES]
        print(f"StableDreamer {level.lower()}: {text}")


RUNTIME: Runtime | None = None


def user_folder() -> Path:
    """The add-on's own folder for history, results and the backend log."""
    pkg = __package__
    try:
        if pkg.startswith("bl_ext."):
            return Path(bpy.utils.extension_path_user(pkg, create=True))
    except (ValueError, AttributeError):
        pass
    return Path(bpy.utils.user_resource("CONFIG", path="stabledreamer", create=True))


def get() -> Runtime:
    global RUNTIME
    if RUNTIME is None:
        RUNTIME = Runtime(user_folder())
    return RUNTIME


# --- connecting ---------------------------------------------------------------------------------


def connection_settings():
    from .session import ConnectionSettings

    p = get_prefs()
    if p is None:
        return ConnectionSettings(DEFAULT_ENDPOINT)
    return ConnectionSettings(
        endpoint=p.endpoint.strip() or DEFAULT_ENDPOINT,
        use_curve=p.use_curve,
        key_dir=bpy.path.abspath(p.key_dir) if p.key_dir else "",
        client_secret=bpy.path.abspath(p.client_secret) if p.client_secret else "",
        server_public=bpy.path.abspath(p.server_public) if p.server_public else "",
    )


def connect(timeout_s: float | None = None, auto_start: bool = True) -> None:
    """Start connecting with the preferences' settings (raises SessionError with what to do).
    ``auto_start``: when nobody answers on this machine, start the backend (preferences)."""
    from .session import CONNECT_TIMEOUT_S, Session

    rt = get()
    rt.auto_start_ok = auto_start
    settings = connection_settings()
    jobs, selected = {}, None
    if rt.session is not None:
        if rt.session.settings.endpoint == settings.endpoint:
            jobs, selected = rt.session.jobs, rt.session.selected
        # else those jobs live on the other backend (their history entries remember)
        rt.session.close()
    rt.session = Session(settings)
    rt.session.jobs, rt.session.selected = jobs, selected
    models_link.of(rt.session)  # the Models panel's link: asks for the sets after the handshake
    rt.session.connect(timeout_s or CONNECT_TIMEOUT_S)
    ensure_timer()


def start_backend() -> None:
    """Start the local backend from the preferences' command, then connect to it."""
    from stabledreamer_protocol import is_loopback

    from .session import STARTUP_TIMEOUT_S

    rt = get()
    p = get_prefs()
    settings = connection_settings()
    if not is_loopback(settings.endpoint):
        raise backend_process.BackendStartError(
            f"{settings.endpoint} is not on this machine: start the backend there."
        )
    if backend_process.running() is None:
        command = p.backend_command if p is not None else "stabledreamer serve"
        backend_process.start(command, settings.endpoint, rt.folder / "backend.log")
        backend_process.stop_at_exit(bool(p and p.stop_on_quit))
        rt.notify("INFO", f"Started the backend; its log is {rt.folder / 'backend.log'}")
    rt.starting_backend = True
    connect(STARTUP_TIMEOUT_S)


def reattach_active_job() -> None:
    """After a reload: follow the jobs that were queued or running (the backend kept them)."""
    rt = get()
    entries = [e for e in rt.history.entries if e.active]
    if not entries:
        return
    endpoint = connection_settings().endpoint
    here = [e for e in entries if not e.endpoint or e.endpoint == endpoint]
    for entry in entries:
        if entry not in here:
            rt.notify(
                "WARNING",
                f"The run {entry.prompt[:40]!r} is on the backend {entry.endpoint}; set that "
                "address in the preferences and Connect to follow it.",
            )
    if not here:
        return
    try:
        connect(auto_start=False)
    except Exception as e:  # SessionError: missing keys, a bad address
        rt.notify("WARNING", f"Could not reconnect to follow {here[0].prompt[:40]!r}: {e}")
        return
    for entry in sorted(here, key=lambda e: e.created):  # the oldest first: it runs first
        rt.session.follow(
            entry.job, entry.prompt, entry.preview_points, parent=entry.parent or None,
            mode=entry.mode or None, group=entry.group,
        )  # fmt: skip


# --- the timer ----------------------------------------------------------------------------------


def ensure_timer() -> None:
    if not bpy.app.timers.is_registered(poll):
        bpy.app.timers.register(poll, first_interval=0.05, persistent=True)


_REATTACH_PENDING = False


def poll() -> float:
    """Timer callback: apply what arrived; returns the seconds until the next call."""
    global _REATTACH_PENDING
    rt = get()
    prefs = get_prefs()
    interval = 1.0 / (prefs.update_rate if prefs is not None else 4.0)
    if _REATTACH_PENDING:  # deferred from register(), where bpy.data is restricted
        _REATTACH_PENDING = False
        try:
            reattach_active_job()
        except Exception:
            traceback.print_exc()
    session = rt.session
    if session is None:
        return IDLE_INTERVAL_S
    try:
        updates = session.poll()
        if updates or rt.pending_imports:  # most ticks bring nothing: no context to set up
            with _ui_context():
                for update in updates:
                    _apply_safely(rt, update)
                if rt.pending_imports and _can_import():
                    _import_pending(rt)
        _watch_backend_start(rt)
        if session.selected != rt.shown_job and session.selected is not None:
            rt.shown_job = session.selected  # the queue moved on: draw what arrived for it
            select_job(session.selected)
    except Exception as e:  # never let the timer die: it would silently stop all updates
        traceback.print_exc()
        rt.notify("ERROR", f"Internal error while updating: {type(e).__name__}: {e}")
    _redraw()
    return interval if session.state != "disconnected" else IDLE_INTERVAL_S


def _apply_safely(rt: Runtime, update) -> None:
    """One update; a failure loses only that update (a result can be fetched again)."""
    from .session import ResultUpdate

    try:
        apply(rt, update)
    except Exception as e:
        traceback.print_exc()
        rt.notify("ERROR", f"Could not apply a {type(update).__name__}: {type(e).__name__}: {e}")
        job = rt.session.jobs.get(update.job) if rt.session is not None else None
        if isinstance(update, ResultUpdate) and job is not None:
            job.imported, job.download, job.download_failed = False, None, True


def _ui_context():
    """Timers run without a window: borrow the one showing the current scene in a 3D view (so
    the import lands in the scene and view layer the artist sees). No window (background mode):
    the plain context."""
    wm = getattr(bpy.context, "window_manager", None)
    windows = list(wm.windows) if wm is not None else []
    scene = bpy.context.scene
    windows.sort(key=lambda w: w.scene != scene)
    for window in windows:
        for area in window.screen.areas:
            if area.type == "VIEW_3D":
                region = next((r for r in area.regions if r.type == "WINDOW"), None)
                return bpy.context.temp_override(
                    window=window, screen=window.screen, area=area, region=region
                )
    return contextlib.nullcontext()


def _can_import() -> bool:
    """Importing switches the active object; never do it under an artist in Edit Mode."""
    active = bpy.context.view_layer.objects.active
    return active is None or active.mode == "OBJECT"


def _watch_backend_start(rt: Runtime) -> None:
    session = rt.session
    if session.unreachable and not rt.starting_backend and rt.auto_start_ok:
        prefs = get_prefs()
        if prefs is not None and prefs.auto_start and backend_process.running() is None:
            from stabledreamer_protocol import is_loopback

            if is_loopback(session.settings.endpoint):
                try:
                    start_backend()
                except backend_process.BackendStartError as e:
                    rt.notify("ERROR", str(e))
        return
    if rt.starting_backend:
        code = backend_process.exited_early()
        if code is not None:
            rt.starting_backend = False
            session.close()
            session.status = "The backend stopped at start"
            rt.notify(
                "ERROR",
                f"The backend exited with code {code} while starting; see "
                f"{rt.folder / 'backend.log'} (is the command right?).",
            )
        elif session.connected or session.state == "disconnected":
            rt.starting_backend = False


def apply(rt: Runtime, update) -> None:
    from .session import DebugUpdate, JobUpdate, LogUpdate, Notice, PreviewUpdate, ResultUpdate

    scene = bpy.context.scene
    settings = getattr(scene, "stabledreamer", None)
    if isinstance(update, Notice):
        rt.notify(update.level, update.text)
    elif isinstance(update, JobUpdate):
        v = update.view
        rt.history.update(v.job, state=v.state, message=v.message, seed=v.seed)
    elif isinstance(update, PreviewUpdate):
        if settings is not None and not settings.live_preview:
            return
        if rt.session is not None and update.job != rt.session.selected:
            return  # another job of the queue: kept in the session until it is selected
        show_preview(rt, update)
    elif isinstance(update, DebugUpdate):
        if rt.session is not None and update.job != rt.session.selected:
            return
        rt.debug_image = result_import.show_debug_image(update.image).name
        rt.debug_tiles = result_import.debug_tiles(update.image, update.labels)
    elif isinstance(update, LogUpdate):
        text = result_import.show_log(update.lines)
        rt.notify("INFO", f"Backend log: {len(update.lines)} lines in the text {text.name!r}")
    elif isinstance(update, ResultUpdate):
        _on_result(rt, update, scene)


def show_preview(rt: Runtime, update) -> None:
    """Draw a job's preview in the preview object, where its history entry places it."""
    prefs = get_prefs()
    obj = preview.update_from_gaussians(
        update.gaussians,
        point_cap=prefs.point_cap if prefs is not None else preview.DEFAULT_POINT_CAP,
    )
    entry = rt.history.get(update.job)
    placement = entry.placement if entry is not None else None
    if placement:
        preview.place(placement[:3], placement[3], obj)
    else:
        preview.place((0.0, 0.0, 0.0), 1.0, obj)
    preview.set_visible(True, obj)


def select_job(job: str) -> None:
    """Show ``job``: its newest preview at once (when one arrived), its later ones as they come."""
    rt = get()
    if rt.session is None:
        return
    update, debug = rt.session.select(job)
    rt.shown_job = job
    rt.debug_tiles = []
    settings = getattr(bpy.context.scene, "stabledreamer", None)
    if update is not None and (settings is None or settings.live_preview):
        show_preview(rt, update)
    elif rt.session.job is not None and rt.session.job.state != "running":
        preview.set_visible(False)
    if debug is not None:
        rt.debug_image = result_import.show_debug_image(debug.image).name
        rt.debug_tiles = result_import.debug_tiles(debug.image, debug.labels)


def _on_result(rt: Runtime, update, scene) -> None:
    folder = rt.folder / "results" / update.job
    result_import.write_files(folder, update.files)
    view = rt.session.jobs.get(update.job) if rt.session is not None else None
    if rt.history.get(update.job) is None and view is not None:
        # a job of this key found on the backend without an entry here (another Blender's):
        # remembered, so its result is named and placed like any other
        rt.history.add(
            Entry(
                job=view.job, prompt=view.prompt, seed=view.seed, parent=view.parent or "",
                mode=view.mode or "", endpoint=rt.session.settings.endpoint,
            )
        )  # fmt: skip
    rt.history.update(
        update.job, state="done", result_dir=str(folder), metrics=_small(update.metrics)
    )
    job = rt.session.jobs.get(update.job) if rt.session is not None else None
    if job is not None:
        job.imported = True  # even when the import waits or fails: files are saved
    if "mesh.glb" not in update.files:
        why = update.metrics.get("mesh_error") or "no reason given"
        rt.notify(
            "ERROR",
            f"The backend made no mesh ({why}). The Gaussians are saved in {folder}; the "
            "preview stays in the scene.",
        )
        return
    rt.pending_imports.append(update.job)
    if _can_import():
        _import_pending(rt)
    else:
        rt.notify("INFO", "The result is ready: it is imported when you leave Edit Mode.")


def _import_pending(rt: Runtime) -> None:
    scene = bpy.context.scene
    settings = getattr(scene, "stabledreamer", None)
    while rt.pending_imports:
        job = rt.pending_imports.pop(0)
        entry = rt.history.get(job) or Entry(job=job, prompt=job)
        try:
            obj = import_entry(entry, scene, gaussians=bool(settings and settings.import_gaussians))
        except Exception as e:
            rt.notify(
                "ERROR",
                f"The result is saved in {entry.result_dir} but could not be imported: {e}",
            )
            continue
        selected = rt.session.job if rt.session is not None else None
        if selected is None or selected.job == job or selected.state != "running":
            preview.set_visible(False)  # else it shows the next job of the queue
        coll = obj.users_collection[0]
        rt.notify("INFO", f"Imported {obj.name!r} into the collection {coll.name!r}")
        blockout = bpy.data.objects.get(entry.source_object) if entry.source_object else None
        layer = bpy.context.view_layer
        if blockout is not None and layer.objects.get(blockout.name) is not None:
            blockout.hide_set(True, view_layer=layer)  # replaced in place; the eye brings it back
            rt.notify("INFO", f"Hid the blockout {blockout.name!r} (the result took its place)")
        if bpy.ops.ed.undo_push.poll():  # one undo step for the import and its placement
            bpy.ops.ed.undo_push(message="StableDreamer: import result")


def import_entry(entry: Entry, scene=None, gaussians: bool = False):
    """Import a history entry's mesh (at its blockout, else at the 3D cursor), and with
    ``gaussians`` its .ply as Gaussians into the same collection. Variations share one collection
    and are named with their seed; variations and refined or continued runs land beside the
    results they belong with (``layout.beside``), not on top of them."""
    from . import layout

    scene = scene or bpy.context.scene
    if not entry.result_dir:
        raise FileNotFoundError("this run has no downloaded result")
    if entry.placement:
        location, scale = tuple(entry.placement[:3]), entry.placement[3]
    else:
        location, scale = tuple(scene.cursor.location), 1.0
    name = result_import.object_name(entry.prompt)
    collection = None
    history = get().history
    neighbours = layout.neighbours(entry, history)
    if entry.group:
        name = f"{name} (seed {entry.seed})" if entry.seed is not None else name
        collection = layout.group_collection(entry, history, scene)
    elif entry.mode:
        name = f"{name} ({entry.mode})"
    folder = Path(entry.result_dir)
    obj = result_import.import_mesh(
        folder / "mesh.glb", name, location, scale, scene, collection=collection
    )
    obj[layout.JOB_PROPERTY] = entry.job
    history.update(entry.job, object_name=obj.name)
    moved = [layout.root_of(obj)]
    if gaussians and (folder / "gaussians.ply").is_file():
        from . import gaussian_ply

        prefs = get_prefs()
        splats = gaussian_ply.import_gaussians(
            folder / "gaussians.ply",
            f"{obj.name} Gaussians",
            obj.users_collection[0],
            point_cap=prefs.point_cap if prefs is not None else preview.DEFAULT_POINT_CAP,
        )
        splats.location, splats.scale = location, (scale, scale, scale)
        splats[layout.JOB_PROPERTY] = entry.job
        moved.append(splats)
    layout.beside(moved, obj, neighbours)
    return obj


def _small(metrics: dict) -> dict:
    """Metrics worth keeping in the history (numbers and short strings)."""
    out = {}
    for k, v in metrics.items():
        if isinstance(v, int | float | bool) or (isinstance(v, str) and len(v) < 200):
            out[k] = v
    ms = metrics.get("model_set")
    if isinstance(ms, dict):  # which set made it, and so which licence applies
        out["model_set"] = str(ms.get("id", ""))[:64]
        out["licence"] = str(ms.get("output_use", ""))[:200]
    return out


def _redraw() -> None:
    wm = getattr(bpy.context, "window_manager", None)
    if wm is None:
        return
    for window in wm.windows:
        for area in window.screen.areas:
            if area.type == "VIEW_3D":
                area.tag_redraw()


# --- lifetime -----------------------------------------------------------------------------------


@persistent
def on_load_post(_dummy=None) -> None:
    """After File > Open: the timer keeps running (persistent); make sure of it."""
    if RUNTIME is not None and RUNTIME.session is not None:
        ensure_timer()


def register() -> None:
    """Re-attaching the job that was running waits for the first poll: ``register`` runs with
    ``bpy.data`` restricted (no file paths, no data)."""
    global _REATTACH_PENDING
    bpy.app.handlers.load_post.append(on_load_post)
    _REATTACH_PENDING = True
    ensure_timer()


def unregister() -> None:
    global RUNTIME
    if on_load_post in bpy.app.handlers.load_post:
        bpy.app.handlers.load_post.remove(on_load_post)
    if bpy.app.timers.is_registered(poll):
        bpy.app.timers.unregister(poll)
    if RUNTIME is not None and RUNTIME.session is not None:
        RUNTIME.session.close()  # LINGER 0: never hangs Blender
    result_import.free_previews()
    RUNTIME = None
