"""Add-on preferences (Edit > Preferences > Add-ons > StableDreamer) and the scene settings."""

from __future__ import annotations

import bpy
from bpy.props import BoolProperty, EnumProperty, FloatProperty, IntProperty, StringProperty

from stabledreamer_protocol import DEFAULT_ENDPOINT  # one home: the protocol (a bundled wheel)

from . import splat_look


def _restyle(self, context):
    """A changed look applies to the Gaussian objects already in the file."""
    from . import preview

    preview.restyle_all()


def addon_key() -> str:
    return __package__


def get_prefs():
    addon = bpy.context.preferences.addons.get(addon_key())
    return addon.preferences if addon is not None else None


class StableDreamerPreferences(bpy.types.AddonPreferences):
    bl_idname = __package__

    endpoint: StringProperty(  # noqa: F821
        name="Backend Address",
        description="Where the backend listens (tcp://HOST:PORT)",
        default=DEFAULT_ENDPOINT,
    )
    use_curve: BoolProperty(  # noqa: F821
        name="Encrypt (CURVE)",
        description="Encrypt and authenticate the connection (the backend's default)",
        default=True,
    )
    key_dir: StringProperty(  # noqa: F821
        name="Key Folder",
        description="CURVE key folder (empty: the backend's default, ~/.config/stabledreamer/keys)",
        subtype="DIR_PATH",
        default="",
    )
    client_secret: StringProperty(  # noqa: F821
        name="Client Secret Key",
        description="This client's secret key file (empty: client.key_secret in the key folder)",
        subtype="FILE_PATH",
        default="",
    )
    server_public: StringProperty(  # noqa: F821
        name="Backend Public Key",
        description="The backend's public key file (empty: server.key in the key folder)",
        subtype="FILE_PATH",
        default="",
    )
    backend_command: StringProperty(  # noqa: F821
        name="Backend Command",
        description="Command that starts a local backend (--bind is added when missing)",
        default="stabledreamer serve",
    )
    auto_start: BoolProperty(  # noqa: F821
        name="Start Backend Automatically",
        description="When Connect finds no backend on this machine, start one with the command",
        default=True,
    )
    stop_on_quit: BoolProperty(  # noqa: F821
        name="Stop Backend When Blender Quits",
        description="Otherwise a backend started from Blender keeps running its jobs",
        default=False,
    )
    point_cap: IntProperty(  # noqa: F821
        name="Ellipsoid Cap",
        description="Above this many Gaussians the preview shows plain points (faster)",
        default=200_000,
        min=1,
    )
    preview_points: IntProperty(  # noqa: F821
        name="Preview Gaussians",
        description="Most Gaussians the backend streams per preview (0 = no live preview)",
        default=100_000,
        min=0,
        max=1_000_000,
    )
    preview_look: EnumProperty(  # noqa: F821
        name="Gaussian Look",
        description="How the live preview and imported Gaussians are drawn",
        items=[
            ("SPLATS", "Splats", "Ellipsoids where each Gaussian is visible, shaded with its "
             "Gaussian falloff in Material Preview and Rendered (closest to the result)"),
            ("ELLIPSOIDS", "Ellipsoids", "Opaque ellipsoids where each Gaussian is visible"),
            ("POINTS", "Fast Points", "One point per Gaussian (fastest, least faithful)"),
        ],
        default=splat_look.DEFAULT_LOOK,
        update=_restyle,
    )  # fmt: skip
    shell_alpha: FloatProperty(  # noqa: F821
        name="Shell Opacity",
        description="Each Gaussian is drawn out to where its opacity falls below this (those "
        "fainter everywhere are left out); lower draws larger, softer Gaussians",
        default=splat_look.SHELL_ALPHA,
        min=0.001,
        max=0.9,
        update=_restyle,
    )
    update_rate: FloatProperty(  # noqa: F821
        name="Update Rate",
        description="How often the viewport takes new previews and progress (per second)",
        default=4.0,
        min=0.2,
        max=30.0,
    )

    def draw(self, context):
        layout = self.layout
        col = layout.column(heading="Backend")
        col.prop(self, "endpoint")
        col.prop(self, "use_curve")
        sub = col.column()
        sub.active = self.use_curve
        sub.prop(self, "key_dir")
        sub.prop(self, "client_secret")
        sub.prop(self, "server_public")
        col = layout.column(heading="Local Backend")
        col.prop(self, "backend_command")
        col.prop(self, "auto_start")
        col.prop(self, "stop_on_quit")
        col = layout.column(heading="Live Preview")
        col.prop(self, "preview_points")
        col.prop(self, "point_cap")
        col.prop(self, "update_rate")
        col.prop(self, "preview_look")
        col.prop(self, "shell_alpha")


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
        name="Seed", description="Random seed (used when Random is off)", default=0, min=0
    )
    variations: IntProperty(  # noqa: F821
        name="Variations",
        description="Generate this many seeds of the prompt (queued; the results land side by "
        "side in one collection)",
        default=1,
        min=1,
        max=16,
    )
    random_seed: BoolProperty(  # noqa: F821
        name="Random", description="Let the backend pick a new seed for every run", default=True
    )
    live_preview: BoolProperty(  # noqa: F821
        name="Live Preview",
        description="Show the Gaussians in the viewport while they form",
        default=True,
    )
    import_gaussians: BoolProperty(  # noqa: F821
        name="Also Import Gaussians",
        description="Besides the mesh, import the result's 3D Gaussians (.ply) as an object",
        default=False,
    )
    from_selected: BoolProperty(  # noqa: F821
        name="Start from Selected Mesh",
        description="Start from points on the active mesh's surface; the result replaces it in "
        "place",
        default=False,
    )
    init_points: IntProperty(  # noqa: F821
        name="Points", description="Points sampled on the selected mesh", default=5000, min=10,
        max=200_000,
    )  # fmt: skip
    steps_geometry: IntProperty(  # noqa: F821
        name="Geometry Steps", description="Steps of stage 1 (0 = the preset's)", default=0, min=0
    )
    steps_detail: IntProperty(  # noqa: F821
        name="Detail Steps", description="Steps of stage 2 (0 = the preset's)", default=0, min=0
    )
    overrides: StringProperty(  # noqa: F821
        name="Overrides",
        description='Backend settings as JSON, e.g. {"stable_diffusion.guidance_scale": 50}',
        default="",
    )
