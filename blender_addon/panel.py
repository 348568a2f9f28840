"""The sidebar panels (3D viewport > N > StableDreamer): connection, prompt, the job queue and the
selected job's progress, refine and continue, history."""

from __future__ import annotations

import math

import bpy

from . import runtime, viewport_look
from .prefs import get_prefs

ICONS = {"INFO": "INFO", "WARNING": "ERROR", "ERROR": "CANCEL"}
HISTORY_ROWS = 8
QUEUE_ROWS = 8
STATE_ICONS = {"queued": "SORTTIME", "running": "PLAY", "done": "CHECKMARK",
               "failed": "ERROR", "cancelled": "X"}  # fmt: skip


def protocol_version() -> str:
    """The bundled protocol's version, or why it is missing."""
    try:
        from stabledreamer_protocol.version import __version__
    except ImportError as exc:  # pragma: no cover - only in a broken install
        return f"missing ({exc})"
    return __version__


class _Sidebar:
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "StableDreamer"


class STABLEDREAMER_PT_panel(_Sidebar, bpy.types.Panel):
    bl_label = "StableDreamer"
    bl_idname = "STABLEDREAMER_PT_panel"

    def draw(self, context):
        layout = self.layout
        rt = runtime.get()
        s = context.scene.stabledreamer
        session = rt.session

        # connection
        box = layout.box()
        connected = session is not None and session.connected
        box.label(text=rt.status, icon="LINKED" if connected else "UNLINKED")
        prefs = get_prefs()
        if prefs is not None:
            row = box.row()
            row.enabled = not connected
            row.prop(prefs, "endpoint", text="")
        row = box.row(align=True)
        if connected:
            row.operator("stabledreamer.disconnect", icon="X")
        else:
            row.operator("stabledreamer.connect", icon="PLUGIN")
            if session is not None and session.unreachable:
                row.operator("stabledreamer.start_backend", icon="PLAY")
        row.operator("stabledreamer.show_log", text="", icon="TEXT")
        for level, text in rt.messages[-2:]:
            box.label(text=text, icon=ICONS.get(level, "INFO"))

        # prompt
        col = layout.column()
        col.prop(s, "prompt")
        col.prop(s, "negative")
        col.prop(s, "preset")
        row = col.row(align=True)
        row.prop(s, "random_seed", toggle=True)
        sub = row.row(align=True)
        sub.enabled = not s.random_seed
        sub.prop(s, "seed")
        col.prop(s, "variations")
        col.prop(s, "live_preview")
        col.prop(s, "import_gaussians")
        row = col.row(align=True)
        row.prop(s, "from_selected")
        if s.from_selected:
            row.prop(s, "init_points")
        row = layout.row(align=True)
        row.scale_y = 1.4
        busy = session is not None and session.busy
        queueing = session is not None and bool(session.active_jobs)
        gen = row.row(align=True)
        gen.enabled = connected
        gen.operator(
            "stabledreamer.generate", icon="PLAY", text="Add to Queue" if queueing else "Generate"
        )
        can = row.row(align=True)
        can.enabled = busy
        can.operator("stabledreamer.cancel", icon="CANCEL")

        if session is not None:
            draw_queue(layout, session)
        draw_follow_ups(layout, context)

        # the selected job's progress
        job = session.job if session is not None else None
        if job is not None:
            box = layout.box()
            box.label(text=job.prompt[:60], icon="OUTLINER_OB_POINTCLOUD")
            text = job.progress_text()
            if job.state == "running" and hasattr(box, "progress"):
                box.progress(factor=job.fraction, type="BAR", text=text)
            else:
                box.label(text=text)
            if job.download_failed:
                box.operator("stabledreamer.retry_download", icon="FILE_REFRESH").job = job.job
            if job.num_gaussians:
                box.label(text=f"{job.num_gaussians:,} Gaussians")
            if rt.debug_tiles:
                grid = box.grid_flow(columns=len(rt.debug_tiles), even_columns=True)
                for label, icon in rt.debug_tiles:
                    cell = grid.column(align=True)
                    cell.template_icon(icon_value=icon, scale=4.0)
                    cell.label(text=label)


def format_duration(seconds: float) -> str:
    from .session import format_duration as fmt

    return fmt(seconds)


def job_label(job) -> str:
    what = {"refine": "refine: ", "continue": "continue: "}.get(job.mode or "", "")
    seed = f" ({job.seed})" if job.group and job.seed is not None else ""
    return f"{what}{job.prompt[:32]}{seed}"


def short_state(job, session) -> str:
    eta = session.eta(job)
    left = f", ~{format_duration(eta)}" if eta is not None and math.isfinite(eta) else ""
    if job.state == "queued":
        where = f"#{job.queue_position + 1}" if job.queue_position is not None else "queued"
        return where + left
    if job.state == "running":
        return (f"{job.fraction:.0%}" if job.total else "starting") + left
    if job.state == "done" and not job.imported:
        return "downloading" if not job.download_failed else "download failed"
    return job.state


def draw_queue(layout, session) -> None:
    """This client's jobs (prompt, state or queue position, progress, ETA), each with Cancel;
    the selected one shows its preview. Other clients' jobs are only counted."""
    jobs = list(session.jobs.values())[-QUEUE_ROWS:]
    if not jobs and not session.others_active:
        return
    box = layout.box()
    others = session.others_active
    head = "Jobs" + (f" ({others} of other clients on this backend)" if others else "")
    box.label(text=head, icon="SEQ_STRIP_DUPLICATE")
    for job in jobs:
        row = box.row(align=True)
        mark = "RADIOBUT_ON" if job.job == session.selected else "RADIOBUT_OFF"
        op = row.operator("stabledreamer.select_job", text="", icon=mark, emboss=False)
        op.job = job.job
        row.label(text=job_label(job), icon=STATE_ICONS.get(job.state, "DOT"))
        row.label(text=short_state(job, session))
        sub = row.row(align=True)
        sub.enabled = not job.terminal
        sub.operator("stabledreamer.cancel", text="", icon="X").job = job.job


def draw_follow_ups(layout, context) -> None:
    """Refine and Continue for the selected imported result (or the selected finished job)."""
    from .operators import finished_run

    entry, _why = finished_run(context)
    if entry is None:
        return
    box = layout.box()
    box.label(text=f"Result: {entry.prompt[:48]}", icon="MESH_MONKEY")
    row = box.row(align=True)
    row.operator("stabledreamer.refine", icon="BRUSH_DATA").job = entry.job
    row.operator("stabledreamer.continue_run", icon="FORWARD").job = entry.job


class STABLEDREAMER_PT_advanced(_Sidebar, bpy.types.Panel):
    bl_label = "Advanced"
    bl_parent_id = "STABLEDREAMER_PT_panel"
    bl_options = {"DEFAULT_CLOSED"}

    def draw(self, context):
        s = context.scene.stabledreamer
        col = self.layout.column()
        col.prop(s, "steps_geometry")
        col.prop(s, "steps_detail")
        col.prop(s, "overrides")
        col.operator("stabledreamer.import_gaussians", icon="IMPORT")
        col.operator("stabledreamer.preview_demo", icon="POINTCLOUD_DATA")
        viewport_look.draw(col, context)
        col.label(text=f"Protocol {protocol_version()}")


class STABLEDREAMER_PT_history(_Sidebar, bpy.types.Panel):
    bl_label = "History"
    bl_parent_id = "STABLEDREAMER_PT_panel"
    bl_options = {"DEFAULT_CLOSED"}

    def draw(self, context):
        entries = runtime.get().history.entries
        if not entries:
            self.layout.label(text="No runs yet")
        for e in entries[:HISTORY_ROWS]:
            row = self.layout.row(align=True)
            row.label(text=e.label(), icon="CHECKMARK" if e.state == "done" else "DOT")
            op = row.operator("stabledreamer.history_recall", text="", icon="LOOP_BACK")
            op.job = e.job
            sub = row.row(align=True)
            sub.enabled = bool(e.result_dir)
            op = sub.operator("stabledreamer.history_import", text="", icon="IMPORT")
            op.job = e.job
            sub = row.row(align=True)
            sub.enabled = e.state == "done"
            sub.operator("stabledreamer.refine", text="", icon="BRUSH_DATA").job = e.job
            sub.operator("stabledreamer.continue_run", text="", icon="FORWARD").job = e.job


CLASSES = (
    STABLEDREAMER_PT_panel,
    STABLEDREAMER_PT_advanced,
    STABLEDREAMER_PT_history,
    *viewport_look.CLASSES,  # the panel's one-click look fixes
)
