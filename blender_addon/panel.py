"""The sidebar panels (3D viewport > N > StableDreamer): connection, prompt, progress, history."""

from __future__ import annotations

import bpy

from . import runtime, viewport_look
from .prefs import get_prefs

ICONS = {"INFO": "INFO", "WARNING": "ERROR", "ERROR": "CANCEL"}
HISTORY_ROWS = 8


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
        col.prop(s, "live_preview")
        col.prop(s, "import_gaussians")
        row = col.row(align=True)
        row.prop(s, "from_selected")
        if s.from_selected:
            row.prop(s, "init_points")
        row = layout.row(align=True)
        row.scale_y = 1.4
        busy = session is not None and session.busy
        gen = row.row(align=True)
        gen.enabled = connected and not busy
        gen.operator("stabledreamer.generate", icon="PLAY")
        can = row.row(align=True)
        can.enabled = busy
        can.operator("stabledreamer.cancel", icon="CANCEL")

        # progress
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
                box.operator("stabledreamer.retry_download", icon="FILE_REFRESH")
            if job.num_gaussians:
                box.label(text=f"{job.num_gaussians:,} Gaussians")
            if rt.debug_tiles:
                grid = box.grid_flow(columns=len(rt.debug_tiles), even_columns=True)
                for label, icon in rt.debug_tiles:
                    cell = grid.column(align=True)
                    cell.template_icon(icon_value=icon, scale=4.0)
                    cell.label(text=label)


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


CLASSES = (
    STABLEDREAMER_PT_panel,
    STABLEDREAMER_PT_advanced,
    STABLEDREAMER_PT_history,
    *viewport_look.CLASSES,  # the panel's one-click look fixes
)
