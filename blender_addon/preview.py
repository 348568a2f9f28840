"""The live preview object: Gaussians drawn where they are visible (geometry nodes).

One mesh object holds a vertex per Gaussian with point attributes written by ``foreach_set``:

``position`` (the vertex coordinates), ``scale`` FLOAT_VECTOR (standard deviations, linear),
``rot`` QUATERNION (w, x, y, z), ``color`` FLOAT_COLOR (sRGB base colour as stored on the wire,
alpha = opacity), ``opacity`` FLOAT, ``extent`` FLOAT (how many standard deviations out the
Gaussian is drawn, 0 = left out: ``splat_look.extents``) and ``cell`` INT (its Solid-mode palette
cell: ``splat_look.cells``).

The geometry-nodes modifier (``splat_nodes.gaussian_group``) instances a unit ico sphere on every
visible point, scaled by ``scale * extent`` and rotated by ``rot``, with the splat shader (Gaussian
falloff) for Material Preview and Rendered and a palette material whose viewport colour Solid mode
shows. The look (``splat_look.LOOKS``: fast points, opaque ellipsoids, splat shading) comes from
the add-on preferences; above ``point_cap`` Gaussians the same group switches to plain points
(Mesh to Points), which the viewport draws far faster than instanced meshes.

The object and its mesh are reused between updates (updated in place): the same count only
rewrites the attributes; a new count rebuilds the mesh's geometry. Input: plain numpy arrays, as
``stabledreamer_protocol`` ``Preview.gaussians()`` returns them.
"""

from __future__ import annotations

import bpy
import numpy as np

from . import splat_look, splat_nodes
from .splat_nodes import GROUP_NAME, POINTS_MATERIAL_NAME, socket_id  # noqa: F401 (public names)

OBJECT_NAME = "StableDreamer Preview"
SHADER_NAME = splat_nodes.SHADER_NAME
MODIFIER_NAME = "StableDreamer Gaussians"
DEFAULT_POINT_CAP = 200_000

ATTRIBUTES = {
    # name: (data type, foreach_set key, components)
    "scale": ("FLOAT_VECTOR", "vector", 3),
    "rot": ("QUATERNION", "value", 4),
    "color": ("FLOAT_COLOR", "color", 4),
    "opacity": ("FLOAT", "value", 1),
    "extent": ("FLOAT", "value", 1),
    "cell": ("INT", "value", 1),
}


def current_look() -> tuple[str, float]:
    """The look and its shell threshold from the add-on preferences (defaults without them)."""
    from .prefs import get_prefs

    prefs = get_prefs()
    look = getattr(prefs, "preview_look", splat_look.DEFAULT_LOOK)
    alpha = getattr(prefs, "shell_alpha", splat_look.LOOK_ALPHA[look])
    return look, alpha


# --------------------------------------------------------------------------- the preview object


def _check(name: str, a, n: int, cols: int) -> np.ndarray:
    a = np.asarray(a, dtype=np.float32)
    if cols == 1:
        a = a.reshape(-1)
        if a.shape != (n,):
            raise ValueError(f"{name} must have shape [{n}], got {list(a.shape)}")
    elif a.shape != (n, cols):
        raise ValueError(f"{name} must have shape [{n}, {cols}], got {list(a.shape)}")
    return np.ascontiguousarray(a)


def preview_object(collection: bpy.types.Collection | None = None) -> bpy.types.Object:
    """The preview object, created on first use (with its mesh and modifier)."""
    obj = bpy.data.objects.get(OBJECT_NAME)
    if obj is not None and obj.type == "MESH":
        scene = bpy.context.scene
        if scene.objects.get(obj.name) is None:  # another scene, or unlinked by the artist
            (collection or scene.collection).objects.link(obj)
        return obj
    return new_gaussian_object(OBJECT_NAME, collection)


def new_gaussian_object(
    name: str, collection: bpy.types.Collection | None = None
) -> bpy.types.Object:
    """A new, empty object with the Gaussian modifier (Blender makes the name unique)."""
    mesh = bpy.data.meshes.new(name)
    obj = bpy.data.objects.new(name, mesh)
    (collection or bpy.context.scene.collection).objects.link(obj)
    _modifier(obj)
    return obj


OLD_MODIFIER_NAME = "StableDreamer Ellipsoids"
"""The modifier of add-on versions before the splat look (replaced when such a file is opened)."""


def _modifier(obj: bpy.types.Object) -> bpy.types.NodesModifier:
    old = obj.modifiers.get(OLD_MODIFIER_NAME)
    if old is not None:
        obj.modifiers.remove(old)
    mod = obj.modifiers.get(MODIFIER_NAME)
    if mod is None:
        mod = obj.modifiers.new(MODIFIER_NAME, "NODES")
    if mod.node_group is None:
        mod.node_group = splat_nodes.gaussian_group()
    key = socket_id(mod.node_group, "Palette")
    palette = splat_nodes.palette_object()
    if mod.get(key) is not palette:
        mod[key] = palette
    return mod


def _set_input(mod: bpy.types.NodesModifier, name: str, value) -> None:
    key = socket_id(mod.node_group, name)
    if mod.get(key) != value:  # writing an unchanged value would still re-evaluate the group
        mod[key] = value


def _ensure_attributes(mesh: bpy.types.Mesh) -> None:
    """Every attribute of ``ATTRIBUTES`` on the points, of its data type (a wrong one replaced)."""
    attrs = mesh.attributes
    for name, (dtype, _key, _c) in ATTRIBUTES.items():
        a = attrs.get(name)
        if a is not None and (a.data_type != dtype or a.domain != "POINT"):
            attrs.remove(a)
            a = None
        if a is None:
            attrs.new(name, dtype, "POINT")


def _write_attributes(mesh: bpy.types.Mesh, values: dict[str, np.ndarray]) -> None:
    attrs = mesh.attributes
    for name, (_dtype, key, _c) in ATTRIBUTES.items():
        attrs[name].data.foreach_set(key, values[name].ravel())


def update_preview(
    means,
    scales,
    quats,
    rgb,
    opacities,
    *,
    log_scales: bool = False,
    point_cap: int = DEFAULT_POINT_CAP,
    look: str | None = None,
    shell_alpha: float | None = None,
    size: float | None = None,
    keep_all: bool = False,
    rgba=None,
    obj: bpy.types.Object | None = None,
) -> bpy.types.Object:
    """Write N Gaussians into the preview object (created if needed) and return it.

    ``means [N,3]``, ``scales [N,3]`` (standard deviations; natural logs when ``log_scales``),
    ``quats [N,4]`` (w, x, y, z), ``rgb [N,3]`` (sRGB in [0, 1]), ``opacities [N]`` in [0, 1].
    ``look`` is one of ``splat_look.LOOKS`` and ``shell_alpha`` the alpha at which each Gaussian's
    shell ends (both default to the add-on preferences); Gaussians fainter than that everywhere are
    left out of the mesh, or with ``keep_all`` kept there and not drawn (an imported file stays
    whole, so a lower Shell Opacity can show them). ``size`` scales every extent. More than
    ``point_cap`` Gaussians switch the modifier to plain points. ``rgba [N,4]``, when the caller
    has it (the wire decodes colour and opacity together), must hold ``rgb`` and ``opacities``:
    it is written as the colour attribute as it is, not assembled again.
    """
    means = np.asarray(means, dtype=np.float32)
    if means.ndim != 2 or means.shape[1] != 3:
        raise ValueError(f"means must have shape [N, 3], got {list(means.shape)}")
    n = means.shape[0]
    scales = _check("scales", scales, n, 3)
    if log_scales:
        scales = np.exp(scales)
    quats = _check("quats", quats, n, 4)
    rgb = _check("rgb", rgb, n, 3)
    opacities = _check("opacities", opacities, n, 1)
    if rgba is not None:
        rgba = _check("rgba", rgba, n, 4)
    if look is None or shell_alpha is None:
        pref_look, pref_alpha = current_look()
        look = look or pref_look
        shell_alpha = pref_alpha if shell_alpha is None else shell_alpha
    if look not in splat_look.LOOKS:
        raise ValueError(f"look must be one of {', '.join(splat_look.LOOKS)}, got {look!r}")
    extent = splat_look.extents(opacities, shell_alpha)
    shown = extent > 0
    if shown.all():
        shown = slice(None)  # a boolean mask of all True would still copy the colours below
    elif not keep_all:  # leave out those fainter than the shell everywhere
        means, scales, quats, rgb = means[shown], scales[shown], quats[shown], rgb[shown]
        opacities, extent = opacities[shown], extent[shown]
        rgba = rgba[shown] if rgba is not None else None
        n = len(means)
        shown = slice(None)
    cell = splat_look.cells(rgb, solid_level=_solid_levels(look, opacities, shell_alpha))

    obj = obj or preview_object()
    mesh = obj.data
    rebuilt = len(mesh.vertices) != n
    if rebuilt:
        mesh.clear_geometry()
        mesh.vertices.add(n)

    colors = rgba
    if colors is None:
        colors = np.empty((n, 4), dtype=np.float32)
        colors[:, :3] = rgb
        colors[:, 3] = opacities
    mesh.attributes["position"].data.foreach_set("vector", np.ascontiguousarray(means).ravel())
    values = {"scale": scales, "rot": quats, "color": colors, "opacity": opacities,
              "extent": extent, "cell": cell}  # fmt: skip
    if rebuilt:
        _ensure_attributes(mesh)
    try:  # the attributes are checked when the mesh is rebuilt or a write fails, not every time
        _write_attributes(mesh, values)
    except (KeyError, TypeError, RuntimeError):
        _ensure_attributes(mesh)
        _write_attributes(mesh, values)
    mesh.update()

    mod = _modifier(obj)
    splat_nodes.set_palette_colors(  # an imported file shows every colour at once
        splat_look.cell_colors(rgb[shown], cell[shown]),
        limit=None if keep_all else splat_nodes.PALETTE_WRITES,
    )
    splat_nodes.sync_scene(bpy.context.scene)
    _apply_look(mod, look, points_only=n > point_cap or look == "POINTS")
    _set_input(mod, "Keep All", bool(keep_all))
    if size is not None:
        _set_input(mod, "Extent Scale", float(size))
    obj.update_tag()
    return obj


def _solid_levels(look: str, opacities: np.ndarray, shell_alpha: float):
    """Solid mode's coverage level per Gaussian: the Splats look draws faint Gaussians' shells
    transparent (``splat_look.solid_levels``), the others opaque (the last level)."""
    if look == "SPLATS":
        return splat_look.solid_levels(opacities, shell_alpha)
    return len(splat_look.COVERAGE_LEVELS)


def _apply_look(mod: bpy.types.NodesModifier, look: str, points_only: bool) -> None:
    _set_input(mod, "Points Only", bool(points_only))
    _set_input(mod, "Splat Shading", look == "SPLATS")


def gaussian_objects() -> list[bpy.types.Object]:
    """Every object drawn by the Gaussian modifier (the live preview and imported .ply files)."""
    return [o for o in bpy.data.objects if o.type == "MESH" and o.modifiers.get(MODIFIER_NAME)]


def restyle(
    obj: bpy.types.Object,
    look: str | None = None,
    shell_alpha: float | None = None,
    point_cap: int | None = None,
) -> None:
    """Apply a look to an existing Gaussian object (its stored opacities give the new extents; a
    Gaussian left out before stays out until the next update or import)."""
    pref_look, pref_alpha = current_look()
    look = look or pref_look
    shell_alpha = pref_alpha if shell_alpha is None else shell_alpha
    if point_cap is None:
        from .prefs import get_prefs

        point_cap = getattr(get_prefs(), "point_cap", DEFAULT_POINT_CAP)
    mesh = obj.data
    n = len(mesh.vertices)
    if n == 0 or "opacity" not in mesh.attributes or "extent" not in mesh.attributes:
        return
    opacity = np.empty(n, dtype=np.float32)
    mesh.attributes["opacity"].data.foreach_get("value", opacity)
    mesh.attributes["extent"].data.foreach_set("value", splat_look.extents(opacity, shell_alpha))
    if "cell" in mesh.attributes:  # the shells' Solid-mode coverage follows their new extents
        cell = np.empty(n, dtype=np.int32)
        mesh.attributes["cell"].data.foreach_get("value", cell)
        colours = splat_look.LEVELS**3
        cell %= colours
        cell += colours * np.asarray(_solid_levels(look, opacity, shell_alpha), dtype=np.int32)
        mesh.attributes["cell"].data.foreach_set("value", cell)
    mesh.update()
    _apply_look(_modifier(obj), look, points_only=n > point_cap or look == "POINTS")
    splat_nodes.sync_scene(bpy.context.scene)
    obj.update_tag()


def restyle_all(**kw) -> int:
    """Apply the preferences' look to every Gaussian object; returns how many."""
    objs = gaussian_objects()
    for obj in objs:
        restyle(obj, **kw)
    return len(objs)


def update_from_gaussians(g: dict, **kw) -> bpy.types.Object:
    """Update from decoded Gaussians (``Preview.gaussians()``: its ``rgba`` is used when there)."""
    return update_preview(
        g["means"], g["scales"], g["quats"], g["rgb"], g["opacities"], rgba=g.get("rgba"), **kw
    )


def update_from_preview(preview, **kw) -> bpy.types.Object:
    """Update from a protocol ``Preview`` message (anything with ``gaussians()``)."""
    return update_from_gaussians(preview.gaussians(log_scales=False), **kw)


def demo_gaussians(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Synthetic Gaussians on a unit sphere (for the demo operator, tests and benchmarks)."""
    rng = np.random.default_rng(seed)
    d = rng.normal(size=(n, 3)).astype(np.float32)
    d /= np.linalg.norm(d, axis=1, keepdims=True) + 1e-12
    q = rng.normal(size=(n, 4)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True) + 1e-12
    return {
        "means": d,
        "scales": rng.uniform(0.01, 0.04, size=(n, 3)).astype(np.float32),
        "quats": q,
        "rgb": (0.5 + 0.5 * d).astype(np.float32),
        "opacities": rng.uniform(0.2, 1.0, size=n).astype(np.float32),
    }


def set_visible(visible: bool, obj: bpy.types.Object | None = None) -> None:
    """Show or hide the preview object (hidden, not deleted, once the mesh is imported)."""
    obj = obj or bpy.data.objects.get(OBJECT_NAME)
    if obj is not None:
        obj.hide_viewport = not visible
        obj.hide_render = not visible


def place(location, scale: float, obj: bpy.types.Object | None = None) -> None:
    """Put the backend's unit frame at ``location``, scaled (start-from-selection placement)."""
    obj = obj or bpy.data.objects.get(OBJECT_NAME)
    if obj is not None:
        obj.location = tuple(location)
        obj.scale = (scale, scale, scale)
