"""StableDreamer for Blender: a sidebar panel and the live Gaussian preview.

This increment: the N-panel (tab "StableDreamer"), the scene settings, the preview object
(``preview.py``) and a demo operator that fills it with synthetic Gaussians. Connecting to the
backend (submit, the timer-driven client, mesh import) lands in the next increment; its operators
are present but report that plainly.
"""

from __future__ import annotations

import bpy
from bpy.props import EnumProperty, IntProperty, PointerProperty, StringProperty

from . import preview

NOT_YET = "backend connection lands in the next increment"


class _State:
    """Module-level status shown by the panel (timers and the client will write it)."""

    status = "Not connected: " + NOT_YET


STATE = _State()


def protocol_version() -> str:
    """The bundled protocol's version, or why it is missing (imported lazily: no zmq at load)."""
    try:
        from stabledreamer_protocol.version import __version__
    except ImportError as exc:  # pragma: no cover - only in a broken install
        return f"missing ({exc})"
    return __version__


class StableDreamerSettings(bpy.types.PropertyGroup):
    prompt: StringProperty(  # noqa: F821
        name="Prompt", description="What to generate", default="a ceramic teapot"
    )
    negative: StringProperty(  # noqa: F821
        name="Negative", description="What to avoid (negative prompt)", default=""
    )
    preset: EnumProperty(  # noqa: F821
        name="Preset",
        description="Quality preset: more steps take longer",
        items=[
            ("preview", "Preview", "Fast, rough result"),
            ("standard", "Standard", "Balanced"),
            ("final", "Final", "Slow, best quality"),
        ],
        default="standard",
    )
    seed: IntProperty(  # noqa: F821
        name="Seed", description="Random seed (0 = the backend picks)", default=0, min=0
    )


class STABLEDREAMER_OT_generate(bpy.types.Operator):
    """Submit the prompt to the StableDreamer backend"""

    bl_idname = "stabledreamer.generate"
    bl_label = "Generate"

    def execute(self, context):
        self.report({"ERROR"}, NOT_YET)
        return {"CANCELLED"}


class STABLEDREAMER_OT_cancel(bpy.types.Operator):
    """Cancel the running job"""

    bl_idname = "stabledreamer.cancel"
    bl_label = "Cancel"

    def execute(self, context):
        self.report({"ERROR"}, NOT_YET)
        return {"CANCELLED"}


class STABLEDREAMER_OT_preview_demo(bpy.types.Operator):
    """Fill the preview object with synthetic Gaussians (no backend needed)"""

    bl_idname = "stabledreamer.preview_demo"
    bl_label = "Demo Preview"
    bl_options = {"REGISTER", "UNDO"}

    count: IntProperty(name="Count", default=20_000, min=1, max=2_000_000)  # noqa: F821

    def execute(self, context):
        g = preview.demo_gaussians(self.count, seed=context.scene.stabledreamer.seed)
        preview.update_preview(**g)
        STATE.status = f"Demo preview: {self.count:,} Gaussians"
        return {"FINISHED"}


class STABLEDREAMER_PT_panel(bpy.types.Panel):
    bl_label = "StableDreamer"
    bl_idname = "STABLEDREAMER_PT_panel"
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "StableDreamer"

    def draw(self, context):
        layout = self.layout
        settings = context.scene.stabledreamer
        layout.label(text=STATE.status, icon="INFO")
        col = layout.column()
        col.prop(settings, "prompt")
        col.prop(settings, "negative")
        col.prop(settings, "preset")
        col.prop(settings, "seed")
        row = layout.row()
        row.operator(STABLEDREAMER_OT_generate.bl_idname, icon="PLAY")
        row.operator(STABLEDREAMER_OT_cancel.bl_idname, icon="CANCEL")
        layout.operator(STABLEDREAMER_OT_preview_demo.bl_idname, icon="POINTCLOUD_DATA")
        layout.label(text=f"Protocol {protocol_version()}")


CLASSES = (
    StableDreamerSettings,
    STABLEDREAMER_OT_generate,
    STABLEDREAMER_OT_cancel,
    STABLEDREAMER_OT_preview_demo,
    STABLEDREAMER_PT_panel,
)


def register():
    for cls in CLASSES:
        bpy.utils.register_class(cls)
    bpy.types.Scene.stabledreamer = PointerProperty(type=StableDreamerSettings)


def unregister():
    del bpy.types.Scene.stabledreamer
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)
