"""Operators and settings of the Models panel: refresh, download (with the licence shown first),
cancel, the hub token, and the check a Generate makes before it submits.

The chosen set lives in the scene (``Scene.stabledreamer_models``); the token field lives in the
window manager (``WindowManager.stabledreamer_hub_token``, masked) only until Send: the operator
clears it before anything else, so the add-on keeps no copy (the backend stores it).
"""

from __future__ import annotations

import bpy
from bpy.props import BoolProperty, EnumProperty, PointerProperty, StringProperty

from . import models_link, runtime
from .models_link import BACKEND_DEFAULT, human_bytes

SET_ITEMS = [
    (BACKEND_DEFAULT, "Backend Default", "The set the backend runs when none is named "
     "(`stabledreamer serve --models`)"),
    ("if-sd", "StableDreamer (IF + SD)", "The paper's recipe: DeepFloyd IF shapes, Stable "
     "Diffusion 2.1 refines. Research and non-commercial use only"),
    ("if-sd-small", "StableDreamer, Smaller IF", "IF-I-M instead of IF-I-XL, for 8 GB GPUs. "
     "Research and non-commercial use only"),
    ("sd-only", "Commercial-Friendly (SD Only)", "Stable Diffusion 2.1 in both stages "
     "(CreativeML Open RAIL++-M): commercial use allowed"),
]  # fmt: skip


class StableDreamerModelSettings(bpy.types.PropertyGroup):
    model_set: EnumProperty(  # noqa: F821
        name="Model Set",
        description="Which models make the asset, and so which licence applies to it",
        items=SET_ITEMS,
        default=BACKEND_DEFAULT,
    )


def _link():
    session = runtime.get().session
    return models_link.of(session) if session is not None else None


def _session_error():
    from .session import SessionError

    return SessionError


def chosen(context) -> str:
    settings = getattr(context.scene, "stabledreamer_models", None)
    return settings.model_set if settings is not None else BACKEND_DEFAULT


def hold_generate(op, context, req) -> bool:
    """Before a Generate: name the chosen set in the request; when it is not on the backend,
    say what is missing and offer the download (True: do not submit now). A set already
    downloading makes the job wait for it instead."""
    link = _link()
    if link is None or not link.supported:
        return False
    choice = chosen(context)
    if choice != BACKEND_DEFAULT:
        req.models = choice
    blocked = link.check_generate(choice)
    if blocked is None:
        return False
    if link.downloading(blocked.set_id) is not None:
        req.wait_for_models = True  # it starts when the download is done
        link.blocked = None
        return False
    link.refresh_quietly()  # a list gone stale (downloaded meanwhile) is right next time
    op.report({"WARNING"}, f"{blocked.text}: download it first (Models panel).")
    if not bpy.app.background:
        bpy.ops.stabledreamer.models_download("INVOKE_DEFAULT", set=blocked.set_id, generate=True)
    return True


class STABLEDREAMER_OT_models_refresh(bpy.types.Operator):
    """Ask the backend which model sets it has"""

    bl_idname = "stabledreamer.models_refresh"
    bl_label = "Refresh Models"

    def execute(self, context):
        link = _link()
        try:
            if link is None:
                raise _session_error()("Not connected to a backend: press Connect first.")
            link.refresh()
        except _session_error() as e:
            self.report({"ERROR"}, str(e))
            return {"CANCELLED"}
        runtime.ensure_timer()
        return {"FINISHED"}


class STABLEDREAMER_OT_models_download(bpy.types.Operator):
    """Download the set's missing models on the backend (its licence is shown first)"""

    bl_idname = "stabledreamer.models_download"
    bl_label = "Download Models"

    set: StringProperty(name="Set", options={"HIDDEN", "SKIP_SAVE"})  # noqa: F821
    generate: BoolProperty(  # noqa: F821
        name="Generate When Downloaded",
        description="Submit the prompt now: the job waits for the download, then runs",
        default=False,
        options={"SKIP_SAVE"},
    )

    def _set_id(self, context) -> str:
        link = _link()
        return self.set or (link.resolve(chosen(context)) if link is not None else "")

    def invoke(self, context, event):
        link = _link()
        if link is None or link.info(self._set_id(context)) is None:
            return self.execute(context)  # says why
        return context.window_manager.invoke_props_dialog(
            self, width=520, title="Download Models", confirm_text="Accept and Download"
        )

    def draw(self, context):
        link = _link()
        info = link.info(self._set_id(context)) if link is not None else None
        if info is None:
            return
        col = self.layout.column(align=True)
        col.label(text=info.title, icon="FILE_3D")
        col.label(text=f"Licence: {', '.join(lic.name for lic in info.licences)}")
        for line in _wrap(f"What you may do with the output: {info.output_use}", 80):
            col.label(text=line)
        for lic in info.licences:
            if lic.url:
                op = col.operator("wm.url_open", text=f"Read: {lic.name}", icon="URL")
                op.url = lic.url
        col.separator()
        for m in info.missing:
            col.label(text=f"{m.title}: {human_bytes(m.bytes_expected - m.bytes_present)}",
                      icon="IMPORT")  # fmt: skip
        col.label(text=f"About {human_bytes(info.bytes_missing)} to download on the backend")
        if info.gated:
            col.label(text="Gated: accept the licence on the model's hub page and set a hub "
                      "token first", icon="LOCKED")  # fmt: skip
        self.layout.prop(self, "generate")

    def execute(self, context):
        link = _link()
        try:
            if link is None:
                raise _session_error()("Not connected to a backend: press Connect first.")
            set_id = self._set_id(context)
            if not set_id:
                raise _session_error()("The backend's model sets are not known yet: Refresh.")
            link.download(set_id)
        except _session_error() as e:
            self.report({"ERROR"}, str(e))
            return {"CANCELLED"}
        runtime.ensure_timer()
        self.report({"INFO"}, f"Downloading model set {set_id} on the backend")
        if self.generate:
            try:
                bpy.ops.stabledreamer.generate()  # the set is downloading: the job waits for it
            except RuntimeError as e:
                self.report({"WARNING"}, str(e))
        return {"FINISHED"}


class STABLEDREAMER_OT_models_cancel(bpy.types.Operator):
    """Stop the download (completed files stay on the backend; the next download goes on)"""

    bl_idname = "stabledreamer.models_cancel"
    bl_label = "Cancel Download"

    set: StringProperty(name="Set", options={"HIDDEN", "SKIP_SAVE"})  # noqa: F821

    def execute(self, context):
        link = _link()
        try:
            if link is None:
                raise _session_error()("Not connected to a backend: press Connect first.")
            link.cancel(self.set or link.resolve(chosen(context)))
        except _session_error() as e:
            self.report({"ERROR"}, str(e))
            return {"CANCELLED"}
        return {"FINISHED"}


class STABLEDREAMER_OT_models_token(bpy.types.Operator):
    """Send the hub token to the backend over the encrypted link (it is stored there, owner-only;
    the add-on keeps no copy). Empty: forget the backend's stored token"""

    bl_idname = "stabledreamer.models_token"
    bl_label = "Send Token"

    def execute(self, context):
        wm = context.window_manager
        token = wm.stabledreamer_hub_token
        wm.stabledreamer_hub_token = ""  # cleared first, whatever happens next
        link = _link()
        try:
            if link is None:
                raise _session_error()("Not connected to a backend: press Connect first.")
            link.set_token(token.strip())
        except _session_error() as e:
            self.report({"ERROR"}, str(e))
            return {"CANCELLED"}
        finally:
            del token
        return {"FINISHED"}


def _wrap(text: str, width: int) -> list[str]:
    import textwrap

    return textwrap.wrap(text, width) or [""]


CLASSES = (
    StableDreamerModelSettings,
    STABLEDREAMER_OT_models_refresh,
    STABLEDREAMER_OT_models_download,
    STABLEDREAMER_OT_models_cancel,
    STABLEDREAMER_OT_models_token,
)


def register_props() -> None:
    bpy.types.Scene.stabledreamer_models = PointerProperty(type=StableDreamerModelSettings)
    bpy.types.WindowManager.stabledreamer_hub_token = StringProperty(
        name="Hub Token",
        description="A Hugging Face access token (huggingface.co/settings/tokens) for gated "
        "models; sent to the backend over CURVE, then cleared here",
        subtype="PASSWORD",
        default="",
    )


def unregister_props() -> None:
    del bpy.types.WindowManager.stabledreamer_hub_token
    del bpy.types.Scene.stabledreamer_models
