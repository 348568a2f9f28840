"""The Models sub-panel (3D viewport > N > StableDreamer > Models): the chosen model set, its
licence line, each model present or missing with its size, Download with a progress bar and
Cancel, the hub token field, and what a held-back Generate is missing."""

from __future__ import annotations

import bpy

from . import models_link, runtime
from .models_link import human_bytes


class STABLEDREAMER_PT_models(bpy.types.Panel):
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "StableDreamer"
    bl_label = "Models"
    bl_parent_id = "STABLEDREAMER_PT_panel"

    def draw(self, context):
        layout = self.layout
        session = runtime.get().session
        if session is None or not session.connected:
            layout.label(text="Connect to see the backend's models", icon="INFO")
            return
        link = models_link.of(session)
        if not link.supported:
            layout.label(text="This backend has no model sets (update it)", icon="INFO")
            return
        settings = context.scene.stabledreamer_models
        layout.prop(settings, "model_set", text="Set")
        set_id = link.resolve(settings.model_set)
        info = link.info(set_id)
        if info is None:
            row = layout.row()
            row.label(text="Asking the backend..." if link.listing is None else
                      f"The backend has no set {set_id!r}")  # fmt: skip
            row.operator("stabledreamer.models_refresh", text="", icon="FILE_REFRESH")
            return

        blocked = link.blocked
        if blocked is not None and blocked.set_id == set_id and not info.present:
            box = layout.box()
            box.alert = True
            box.label(text="Generate needs these models first:", icon="ERROR")
            box.label(text=link.missing_text(set_id) or blocked.text[:120])

        # the licence line: what the artist may do with what this set makes
        box = layout.box()
        names = ", ".join(lic.name for lic in info.licences)
        box.label(text=names, icon="CHECKMARK" if info.commercial else "ERROR")
        box.label(text=info.output_use)
        row = box.row(align=True)
        for lic in info.licences:
            if lic.url:
                op = row.operator("wm.url_open", text=lic.name.split()[0], icon="URL")
                op.url = lic.url

        # each model, present or missing, with its size
        col = layout.column(align=True)
        for m in info.models:
            size = m.bytes_present if m.present else m.bytes_expected - m.bytes_present
            text = f"{m.title}: {human_bytes(size)}" + ("" if m.present else " to download")
            col.label(text=text, icon="CHECKMARK" if m.present else "IMPORT")
            if not m.present and m.gated:
                op = col.operator("wm.url_open", text="Accept its licence", icon="LOCKED")
                op.url = m.hub_page

        # download: progress and cancel, or the button
        running = link.downloading(set_id)
        row = layout.row(align=True)
        if running is not None:
            text = _progress_text(running)
            if hasattr(row, "progress"):
                row.progress(factor=running.fraction, type="BAR", text=text)
            else:
                row.label(text=text)
            op = row.operator("stabledreamer.models_cancel", text="", icon="CANCEL")
            op.set = set_id
        elif info.present:
            row.label(text="All models are on the backend", icon="CHECKMARK")
            row.operator("stabledreamer.models_refresh", text="", icon="FILE_REFRESH")
        else:
            op = row.operator("stabledreamer.models_download", icon="IMPORT",
                              text=f"Download {human_bytes(info.bytes_missing)}")  # fmt: skip
            op.set = set_id
            row.operator("stabledreamer.models_refresh", text="", icon="FILE_REFRESH")
        last = link.downloads.get(set_id)
        if last is not None and last.state in ("failed", "cancelled") and running is None:
            layout.label(text=last.message[:120] or last.state, icon="ERROR")
            if last.link:
                op = layout.operator("wm.url_open", text="Accept the licence", icon="URL")
                op.url = last.link

        # the hub token (masked; sent over CURVE, then cleared)
        col = layout.column(align=True)
        col.label(text=link.token_text())
        row = col.row(align=True)
        row.enabled = session.settings.use_curve
        row.prop(context.window_manager, "stabledreamer_hub_token", text="")
        row.operator("stabledreamer.models_token", text="Send", icon="LOCKED")
        if not session.settings.use_curve:
            col.label(text="The token is only sent over an encrypted (CURVE) link")


def _progress_text(state) -> str:
    text = f"{human_bytes(state.bytes_done)} of {human_bytes(state.bytes_total)}"
    if state.rate_bps:
        text += f", {human_bytes(state.rate_bps)}/s"
    if state.eta_s is not None:
        from .session import format_duration

        text += f", {format_duration(state.eta_s)} left"
    return text


CLASSES = (STABLEDREAMER_PT_models,)
