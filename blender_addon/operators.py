"""Operators: connect, start the backend, generate, cancel, log, history, the demo preview."""

from __future__ import annotations

import json

import bpy
from bpy.props import IntProperty, StringProperty
from bpy_extras.io_utils import ImportHelper

from . import backend_process, preview, runtime
from .prefs import get_prefs


def _session_error():
    from .session import SessionError

    return SessionError


class STABLEDREAMER_OT_connect(bpy.types.Operator):
    """Connect to the StableDreamer backend at the address in the preferences"""

    bl_idname = "stabledreamer.connect"
    bl_label = "Connect"

    def execute(self, context):
        try:
            runtime.connect()
        except _session_error() as e:
            self.report({"ERROR"}, str(e))
            return {"CANCELLED"}
        return {"FINISHED"}


class STABLEDREAMER_OT_disconnect(bpy.types.Operator):
    """Close the connection (a running job keeps running on the backend)"""

    bl_idname = "stabledreamer.disconnect"
    bl_label = "Disconnect"

    def execute(self, context):
        rt = runtime.get()
        if rt.session is not None:
            rt.session.close()
        return {"FINISHED"}


class STABLEDREAMER_OT_start_backend(bpy.types.Operator):
    """Start a local backend with the command from the preferences, then connect"""

    bl_idname = "stabledreamer.start_backend"
    bl_label = "Start Backend"

    def execute(self, context):
        try:
            runtime.start_backend()
        except (backend_process.BackendStartError, _session_error()) as e:
            self.report({"ERROR"}, str(e))
            return {"CANCELLED"}
        self.report({"INFO"}, "Starting the backend (the first start takes a while)")
        return {"FINISHED"}


def job_request(context):
    """The submit for the panel's settings (raises SessionError / SelectionError with a fix)."""
    from . import selection
    from .session import JobRequest, SessionError

    s = context.scene.stabledreamer
    overrides = {}
    if s.overrides.strip():
        try:
            overrides = json.loads(s.overrides)
        except ValueError as e:
            raise SessionError(f"Overrides are not valid JSON ({e}).") from None
        if not isinstance(overrides, dict):
            raise SessionError('Overrides must be a JSON object, e.g. {"detail.steps": 500}.')
    if s.steps_geometry:
        overrides["geometry.steps"] = s.steps_geometry
    if s.steps_detail:
        overrides["detail.steps"] = s.steps_detail
    prefs = get_prefs()
    req = JobRequest(
        prompt=s.prompt,
        negative=s.negative,
        preset=s.preset,
        seed=None if s.random_seed else s.seed,
        overrides=overrides,
        preview_points=(prefs.preview_points if prefs is not None else None)
        if s.live_preview
        else 0,
    )
    placement = None
    if s.from_selected:
        points, colors = selection.sample_surface(context.active_object, s.init_points)
        req.init_points, placement = selection.to_unit_frame(points)
        req.init_colors = colors
    return req, placement


class STABLEDREAMER_OT_generate(bpy.types.Operator):
    """Generate a 3D object from the prompt on the backend (streamed live into the viewport)"""

    bl_idname = "stabledreamer.generate"
    bl_label = "Generate"

    def execute(self, context):
        from .history import Entry
        from .selection import SelectionError

        rt = runtime.get()
        if rt.session is None or not rt.session.connected:
            self.report({"ERROR"}, "Not connected to a backend: press Connect first.")
            return {"CANCELLED"}
        from .models_ops import hold_generate

        try:
            req, placement = job_request(context)
            if hold_generate(self, context, req):  # its model set is missing: offer the download
                return {"CANCELLED"}
            job = rt.session.submit(req)
        except (_session_error(), SelectionError) as e:
            self.report({"ERROR"}, str(e))
            return {"CANCELLED"}
        rt.history.add(
            Entry(
                job=job,
                prompt=req.prompt.strip(),
                negative=req.negative,
                preset=req.preset,
                seed=req.seed,
                endpoint=rt.session.settings.endpoint,
                placement=placement.to_list() if placement is not None else None,
                source_object=context.active_object.name if placement is not None else "",
                preview_points=req.preview_points,
                models=req.models or "",
            )
        )
        runtime.ensure_timer()
        self.report({"INFO"}, f"Submitted: {req.prompt.strip()[:60]}")
        return {"FINISHED"}


def _on_session(op, method: str, done: str = "") -> set[str]:
    """Call ``Session.<method>()``; a SessionError becomes the operator's ERROR report."""
    rt = runtime.get()
    try:
        if rt.session is None:
            raise _session_error()("Not connected to a backend: press Connect first.")
        getattr(rt.session, method)()
    except _session_error() as e:
        op.report({"ERROR"}, str(e))
        return {"CANCELLED"}
    if done:
        op.report({"INFO"}, done)
    return {"FINISHED"}


class STABLEDREAMER_OT_cancel(bpy.types.Operator):
    """Cancel the running job (the backend stops within a step)"""

    bl_idname = "stabledreamer.cancel"
    bl_label = "Cancel"

    def execute(self, context):
        return _on_session(self, "cancel")


class STABLEDREAMER_OT_retry_download(bpy.types.Operator):
    """Download the finished job's result again"""

    bl_idname = "stabledreamer.retry_download"
    bl_label = "Retry Download"

    def execute(self, context):
        return _on_session(self, "retry_download")


class STABLEDREAMER_OT_show_log(bpy.types.Operator):
    """Fetch the backend's recent log into the text "StableDreamer Log" (Text Editor)"""

    bl_idname = "stabledreamer.show_log"
    bl_label = "Backend Log"

    def execute(self, context):
        done = "Fetching the backend log into the text 'StableDreamer Log'"
        return _on_session(self, "request_logs", done)


class _HistoryOperator:
    """What both history operators share: the run they act on (a hidden job id) and its lookup;
    ``act(context, entry)`` does the operator's own part."""

    bl_options = {"REGISTER", "UNDO", "INTERNAL"}

    job: StringProperty(options={"HIDDEN", "SKIP_SAVE"})  # noqa: F821

    def execute(self, context):
        entry = runtime.get().history.get(self.job)
        if entry is None:
            self.report({"ERROR"}, "This run is no longer in the history.")
            return {"CANCELLED"}
        return self.act(context, entry)


class STABLEDREAMER_OT_history_recall(_HistoryOperator, bpy.types.Operator):
    """Put this run's prompt and settings back into the panel"""

    bl_idname = "stabledreamer.history_recall"
    bl_label = "Recall"

    def act(self, context, entry):
        s = context.scene.stabledreamer
        s.prompt, s.negative = entry.prompt, entry.negative
        if entry.preset in ("preview", "standard", "final"):
            s.preset = entry.preset
        if entry.seed is not None:
            s.seed, s.random_seed = int(entry.seed), False
        return {"FINISHED"}


class STABLEDREAMER_OT_history_import(_HistoryOperator, bpy.types.Operator):
    """Import this run's mesh into the scene again"""

    bl_idname = "stabledreamer.history_import"
    bl_label = "Import"

    def act(self, context, entry):
        try:
            obj = runtime.import_entry(entry, context.scene)
        except (OSError, RuntimeError) as e:
            self.report({"ERROR"}, f"Cannot import {entry.prompt[:40]!r}: {e}")
            return {"CANCELLED"}
        self.report({"INFO"}, f"Imported {obj.name!r}")
        return {"FINISHED"}


class STABLEDREAMER_OT_import_gaussians(bpy.types.Operator, ImportHelper):
    """Import a 3D Gaussian Splatting .ply file as Gaussians (instanced ellipsoids)"""

    bl_idname = "stabledreamer.import_gaussians"
    bl_label = "Import 3D Gaussians (.ply)"
    bl_options = {"REGISTER", "UNDO"}

    filename_ext = ".ply"
    filter_glob: StringProperty(default="*.ply", options={"HIDDEN"})  # noqa: F821

    def execute(self, context):
        from . import gaussian_ply

        prefs = get_prefs()
        cap = prefs.point_cap if prefs is not None else preview.DEFAULT_POINT_CAP
        try:
            obj = gaussian_ply.import_gaussians(self.filepath, point_cap=cap)
        except (OSError, gaussian_ply.GaussianPlyError) as e:
            self.report({"ERROR"}, str(e))
            return {"CANCELLED"}
        obj.location = context.scene.cursor.location
        self.report({"INFO"}, f"Imported {len(obj.data.vertices):,} Gaussians as {obj.name!r}")
        return {"FINISHED"}


def menu_import(self, context):
    self.layout.operator(STABLEDREAMER_OT_import_gaussians.bl_idname, text="3D Gaussians (.ply)")


class STABLEDREAMER_OT_preview_demo(bpy.types.Operator):
    """Fill the preview object with synthetic Gaussians (no backend needed)"""

    bl_idname = "stabledreamer.preview_demo"
    bl_label = "Demo Preview"
    bl_options = {"REGISTER", "UNDO"}

    count: IntProperty(name="Count", default=20_000, min=1, max=2_000_000)  # noqa: F821

    def execute(self, context):
        g = preview.demo_gaussians(self.count, seed=context.scene.stabledreamer.seed)
        obj = preview.update_preview(**g)
        preview.set_visible(True, obj)
        return {"FINISHED"}


CLASSES = (
    STABLEDREAMER_OT_connect,
    STABLEDREAMER_OT_disconnect,
    STABLEDREAMER_OT_start_backend,
    STABLEDREAMER_OT_generate,
    STABLEDREAMER_OT_cancel,
    STABLEDREAMER_OT_retry_download,
    STABLEDREAMER_OT_show_log,
    STABLEDREAMER_OT_history_recall,
    STABLEDREAMER_OT_history_import,
    STABLEDREAMER_OT_import_gaussians,
    STABLEDREAMER_OT_preview_demo,
)
