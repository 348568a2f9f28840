"""One click each for seeing the Gaussians as they are: Solid mode coloured by material (where
each Gaussian shows its palette colour), and Cycles with enough transparent bounces for splats.

Neither changes anything by itself: the panel offers the button only where the setting hides the
Gaussians' look, and the operator reports what it changed.
"""

from __future__ import annotations

import bpy

SPLAT_BOUNCES = 64
"""Cycles transparent bounces for splats (Blender's default is 8): ``bench/preview_fidelity.py``
renders the demo's Gaussians with 64; at 8, rays through overlapping splats end black."""


def _view3d_space(context):
    space = getattr(context, "space_data", None)
    if space is not None and space.type == "VIEW_3D":
        return space
    for area in getattr(context.screen, "areas", ()):
        if area.type == "VIEW_3D":
            return area.spaces.active
    return None


def colors_hidden(context) -> bool:
    """Solid mode in this 3D view colours objects otherwise than by material."""
    space = _view3d_space(context)
    return bool(
        space is not None
        and space.shading.type == "SOLID"
        and space.shading.color_type != "MATERIAL"
    )


def bounces_short(scene) -> bool:
    return scene.render.engine == "CYCLES" and scene.cycles.transparent_max_bounces < SPLAT_BOUNCES


class STABLEDREAMER_OT_show_gaussian_colors(bpy.types.Operator):
    bl_idname = "stabledreamer.show_gaussian_colors"
    bl_label = "Show Gaussian Colours"
    bl_description = "Colour Solid mode by material, where each Gaussian shows its own colour"
    bl_options = {"REGISTER", "UNDO"}

    def execute(self, context):
        space = _view3d_space(context)
        if space is None:
            self.report({"ERROR"}, "No 3D viewport to change")
            return {"CANCELLED"}
        was = space.shading.color_type
        space.shading.color_type = "MATERIAL"
        self.report({"INFO"}, f"Solid mode now colours by material (was {was.title()})")
        return {"FINISHED"}


class STABLEDREAMER_OT_splat_render_settings(bpy.types.Operator):
    bl_idname = "stabledreamer.splat_render_settings"
    bl_label = "Enough Bounces for Splats"
    bl_description = (
        f"Raise Cycles' transparent bounces to {SPLAT_BOUNCES}: with fewer, rays through many "
        "overlapping Gaussians end black"
    )
    bl_options = {"REGISTER", "UNDO"}

    def execute(self, context):
        c = context.scene.cycles
        was = c.transparent_max_bounces
        c.transparent_max_bounces = max(was, SPLAT_BOUNCES)
        self.report({"INFO"}, f"Cycles transparent bounces {was} -> {c.transparent_max_bounces}")
        return {"FINISHED"}


def draw(layout, context) -> None:
    """The one-click fixes, where needed (the look itself is an add-on preference)."""
    if colors_hidden(context):
        layout.operator(STABLEDREAMER_OT_show_gaussian_colors.bl_idname, icon="COLOR")
    if bounces_short(context.scene):
        layout.operator(STABLEDREAMER_OT_splat_render_settings.bl_idname, icon="RENDER_STILL")


CLASSES = (STABLEDREAMER_OT_show_gaussian_colors, STABLEDREAMER_OT_splat_render_settings)
