"""Operators: connect, start the backend, generate (queued, variations), cancel, select a job,
refine and continue a finished run, log, history, the demo preview."""

from __future__ import annotations

import json

import bpy
from bpy.props import IntProperty, StringProperty
from bpy_extras.io_utils import ImportHelper

from stabledreamer_protocol import new_id

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


def submit(rt, req, placement=None, source_object: str = "", parent_entry=None) -> str:
    """Send ``req`` and record it in the history (raises SessionError with what to do)."""
    from .history import Entry

    job = rt.session.submit(req)
    parent = parent_entry
    rt.history.add(
        Entry(
            job=job,
            prompt=(req.prompt.strip() or (parent.prompt if parent else "")),
            negative=req.negative if req.mode != "continue" else parent.negative,
            preset=parent.preset if parent else req.preset,
            seed=req.seed,
            endpoint=rt.session.settings.endpoint,
            placement=placement.to_list() if placement is not None else None,
            source_object=source_object,
            preview_points=req.preview_points,
            parent=req.parent or "",
            mode=req.mode or "",
            steps=req.steps or 0,
            group=req.group,
            models=(parent.models if parent else req.models) or "",
        )
    )
    if parent is not None and rt.session.jobs.get(job) is not None:
        rt.session.jobs[job].prompt = rt.history.get(job).prompt
    runtime.ensure_timer()
    return job


class STABLEDREAMER_OT_generate(bpy.types.Operator):
    """Generate a 3D object from the prompt on the backend (streamed live into the viewport).
    While jobs run, the prompt joins the queue; with Variations above 1, that many seeds"""

    bl_idname = "stabledreamer.generate"
    bl_label = "Generate"

    def execute(self, context):
        from dataclasses import replace

        from .selection import SelectionError

        rt = runtime.get()
        if rt.session is None or not rt.session.connected:
            self.report({"ERROR"}, "Not connected to a backend: press Connect first.")
            return {"CANCELLED"}
        from .models_ops import hold_generate

        n = max(1, context.scene.stabledreamer.variations)
        try:
            req, placement = job_request(context)
            if hold_generate(self, context, req):  # its model set is missing: offer the download
                return {"CANCELLED"}
            source = context.active_object.name if placement is not None else ""
            if n == 1:
                submit(rt, req, placement, source)
            else:  # N jobs of one prompt, each its own seed (the backend picks when random)
                group = new_id()
                for i in range(n):
                    seed = None if req.seed is None else req.seed + i
                    submit(rt, replace(req, seed=seed, group=group), placement, source)
        except (_session_error(), SelectionError) as e:
            self.report({"ERROR"}, str(e))
            return {"CANCELLED"}
        what = f"{n} variations of " if n > 1 else ""
        self.report({"INFO"}, f"Submitted: {what}{req.prompt.strip()[:60]}")
        return {"FINISHED"}


def _on_session(op, method: str, done: str = "", *args) -> set[str]:
    """Call ``Session.<method>(*args)``; a SessionError becomes the operator's ERROR report."""
    rt = runtime.get()
    try:
        if rt.session is None:
            raise _session_error()("Not connected to a backend: press Connect first.")
        getattr(rt.session, method)(*args)
    except _session_error() as e:
        op.report({"ERROR"}, str(e))
        return {"CANCELLED"}
    if done:
        op.report({"INFO"}, done)
    return {"FINISHED"}


class STABLEDREAMER_OT_cancel(bpy.types.Operator):
    """Cancel the job: queued, or running (the backend stops within a step)"""

    bl_idname = "stabledreamer.cancel"
    bl_label = "Cancel"
    bl_options = {"INTERNAL"}

    job: StringProperty(options={"SKIP_SAVE"})  # noqa: F821  ("": the selected job)

    def execute(self, context):
        return _on_session(self, "cancel", "", self.job or None)


class STABLEDREAMER_OT_select_job(bpy.types.Operator):
    """Show this job's live preview and debug strip"""

    bl_idname = "stabledreamer.select_job"
    bl_label = "Show Job"
    bl_options = {"INTERNAL"}

    job: StringProperty(options={"HIDDEN", "SKIP_SAVE"})  # noqa: F821

    def execute(self, context):
        try:
            runtime.select_job(self.job)
        except _session_error() as e:
            self.report({"ERROR"}, str(e))
            return {"CANCELLED"}
        return {"FINISHED"}


class STABLEDREAMER_OT_retry_download(bpy.types.Operator):
    """Download the finished job's result again"""

    bl_idname = "stabledreamer.retry_download"
    bl_label = "Retry Download"

    job: StringProperty(options={"HIDDEN", "SKIP_SAVE"})  # noqa: F821

    def execute(self, context):
        return _on_session(self, "retry_download", "", self.job or None)


def finished_run(context, job: str = ""):
    """The finished run a Refine or Continue acts on: ``job``, else the selected imported
    result's, else the panel's selected job; (entry, None) or (None, why not)."""
    from .layout import job_of

    rt = runtime.get()
    job = job or job_of(context.active_object)
    if not job and rt.session is not None and rt.session.job is not None:
        job = rt.session.job.job
    entry = rt.history.get(job) if job else None
    if entry is None:
        return None, "Select an imported result (or pick a run in the history) first."
    if entry.state != "done":
        return None, f"{entry.prompt[:40]!r} is {entry.state}: only finished runs go on."
    return entry, None


class _FollowUp:
    """What Refine and Continue share: the parent run (a hidden job id, or the selection)."""

    bl_options = {"REGISTER", "INTERNAL"}

    job: StringProperty(options={"HIDDEN", "SKIP_SAVE"})  # noqa: F821

    @classmethod
    def poll(cls, context):
        rt = runtime.get()
        return rt.session is not None and rt.session.connected

    def parent(self, context):
        """The finished run to follow up, or None (reported: why there is none)."""
        entry, why = finished_run(context, self.job)
        if entry is None:
            self.report({"ERROR"}, why)
        return entry

    def follow_up(self, context, **fields):
        from .session import JobRequest

        rt = runtime.get()
        entry = self.parent(context)
        if entry is None:
            return {"CANCELLED"}
        prefs = get_prefs()
        s = context.scene.stabledreamer
        points = (prefs.preview_points if prefs is not None else None) if s.live_preview else 0
        req = JobRequest(parent=entry.job, preview_points=points, seed=None, **fields)
        try:
            submit(rt, req, parent_entry=entry)
        except _session_error() as e:
            self.report({"ERROR"}, str(e))
            return {"CANCELLED"}
        self.report({"INFO"}, f"Submitted: {req.mode} of {entry.prompt[:50]}")
        return {"FINISHED"}


class STABLEDREAMER_OT_refine(_FollowUp, bpy.types.Operator):
    """Rerun the detail stage of this finished run from its Gaussians with an edited prompt:
    the geometry is kept, colour and detail are redone (a new run, beside the original)"""

    bl_idname = "stabledreamer.refine"
    bl_label = "Refine"

    prompt: StringProperty(name="Prompt")  # noqa: F821
    negative: StringProperty(name="Negative")  # noqa: F821
    steps: IntProperty(  # noqa: F821
        name="Steps", description="Steps of the detail stage (0 = the run's own)", default=0,
        min=0,
    )  # fmt: skip

    def invoke(self, context, event):
        entry = self.parent(context)
        if entry is None:
            return {"CANCELLED"}
        self.job, self.prompt, self.negative = entry.job, entry.prompt, entry.negative
        return context.window_manager.invoke_props_dialog(self, width=420)

    def execute(self, context):
        if not self.prompt.strip():
            self.report({"ERROR"}, 'The prompt is empty: say what to make, e.g. "a blue chair".')
            return {"CANCELLED"}
        return self.follow_up(
            context, prompt=self.prompt, negative=self.negative, mode="refine",
            steps=self.steps or None,
        )  # fmt: skip


class STABLEDREAMER_OT_continue_run(_FollowUp, bpy.types.Operator):
    """Add steps to this finished run's last stage, held at its final noise level (a new run,
    beside the original)"""

    bl_idname = "stabledreamer.continue_run"
    bl_label = "Continue"

    steps: IntProperty(  # noqa: F821
        name="Steps", description="Steps to add to the last stage", default=300, min=1,
        max=100_000,
    )  # fmt: skip

    def invoke(self, context, event):
        entry = self.parent(context)
        if entry is None:
            return {"CANCELLED"}
        self.job = entry.job
        return context.window_manager.invoke_props_dialog(self)

    def execute(self, context):
        return self.follow_up(context, prompt="", mode="continue", steps=self.steps)


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
    STABLEDREAMER_OT_select_job,
    STABLEDREAMER_OT_retry_download,
    STABLEDREAMER_OT_refine,
    STABLEDREAMER_OT_continue_run,
    STABLEDREAMER_OT_show_log,
    STABLEDREAMER_OT_history_recall,
    STABLEDREAMER_OT_history_import,
    STABLEDREAMER_OT_import_gaussians,
    STABLEDREAMER_OT_preview_demo,
)
