"""The node trees behind the Gaussian objects: the geometry-nodes group that instances them, the
splat shader, and the palette that colours them in Solid mode.

Geometry nodes (``GROUP_NAME``): every visible point (``extent > 0``; the live preview's mesh
holds only those, an imported file's keeps all) gets an instance of a unit ico sphere scaled by
``scale * extent`` (standard deviations times the visible extent, see ``splat_look.extents``) and
rotated by ``rot``. The instance is picked by the point's ``cell`` from the palette object
(``PALETTE_OBJECT``: ``palette_size()`` unit ico spheres, one per material, which its own modifier
splits into an instance each), so Workbench, which shows one colour per material, draws each
Gaussian in its palette cell's colour, and a faint one's shell transparent (the material's
viewport colour carries the alpha of the cell's coverage level: ``splat_look.solid_levels``).
The shader reads ``color`` and ``opacity`` (carried over from the points), ``extent`` (times the
group's Extent Scale) and ``falloff`` (stored) on the instances.

Shader (``SHADER_NAME``, used by every palette material): unlit colour (emission for camera rays,
diffuse for the rest of the scene) with alpha ``opacity * exp(-r**2 / 2)``, where ``r`` is the
distance in standard deviations from the Gaussian's centre to the camera ray through the shaded
point, computed in the instance's own space (there the Gaussian is a unit sphere of radius
``extent``). Back faces are transparent, so each Gaussian is counted once along a ray. With
``falloff`` 0 (the Ellipsoids look) the shell is opaque instead.

Names starting with a dot are Blender's convention for data the lists hide from the artist.
"""

from __future__ import annotations

import math

import bmesh
import bpy
import numpy as np
from bpy.app.handlers import persistent

from . import splat_look

GROUP_NAME = "StableDreamer Gaussians"
SHADER_NAME = ".StableDreamer Splat Shader"
PALETTE_OBJECT = ".StableDreamer Palette"
PALETTE_MATERIAL = ".StableDreamer Palette {:03d}"
PALETTE_SPLIT = ".StableDreamer Palette Split"
POINTS_MATERIAL_NAME = "StableDreamer Splat Points"
ICO_SUBDIVISIONS = 1
"""20-face ico spheres: Workbench draws 100k of them interactively; the splat shader hides the
facets (alpha is computed from the ray, not from the surface)."""


# --------------------------------------------------------------------------- shader


def _attr(nt, name: str, kind: str = "INSTANCER"):
    node = nt.nodes.new("ShaderNodeAttribute")
    node.attribute_type = kind
    node.attribute_name = name
    return node


def _op_node(nt, kind: str, op: str, inputs):
    """A math node of ``kind`` doing ``op`` on ``inputs`` (sockets are linked, values set)."""
    node = nt.nodes.new(kind)
    node.operation = op
    for i, x in enumerate(inputs):
        if isinstance(x, bpy.types.NodeSocket):
            nt.links.new(x, node.inputs[i])
        else:
            node.inputs[i].default_value = x
    return node


def _vmath(nt, op: str, *inputs):
    return _op_node(nt, "ShaderNodeVectorMath", op, inputs)


def _math(nt, op: str, *inputs):
    return _op_node(nt, "ShaderNodeMath", op, inputs).outputs[0]


def _srgb_to_linear(nt, color_socket):
    """((c + 0.055) / 1.055) ** 2.4 per channel (the sRGB curve above 0.04045; below it this
    differs from the exact curve by less than 0.001 linear)."""
    a = _vmath(nt, "MULTIPLY_ADD", color_socket, (1 / 1.055,) * 3, (0.055 / 1.055,) * 3)
    p = _vmath(nt, "POWER", a.outputs[0], (2.4, 2.4, 2.4))
    return p.outputs[0]


SCREEN_BLUR = 0.3
"""Pixels squared added to every projected Gaussian's covariance by the 3DGS rasteriser, gsplat
and ``render()`` (``eps2d``): it widens Gaussians of about a pixel, which the result was trained
with. ``bench/preview_fidelity.py`` on the demo's 16k Gaussians (Cycles, 256 px): 21.5 dB
without it, 23.1 dB with it (the same pictures against ``render()`` without its blur: 28.4 dB)."""
DEFAULT_PIXEL_ANGLE = 2.0 * 0.45572626 / 1080.0
"""Radians per pixel (2 tan(fov/2) / rows) of a 49-degree camera at 1080 rows, for a scene
without a perspective camera."""


PIXEL_ANGLE_LABEL = "Pixel Angle"
FINAL_SHELLS_LABEL = "Final Shells"


def pixel_angle(scene) -> float:
    """Radians per pixel (2 tan(fov/2) / rows) of the scene's camera at its render resolution."""
    cam = getattr(scene, "camera", None)
    if cam is None or cam.type != "CAMERA" or cam.data.type != "PERSP":
        return DEFAULT_PIXEL_ANGLE
    r = scene.render
    rows = max(r.resolution_y * r.resolution_percentage / 100.0, 1.0)
    return 2.0 * math.tan(cam.data.angle_y / 2.0) / rows


def sync_scene(scene) -> None:
    """Tell the node trees what they cannot read themselves: a pixel's size (the scene camera's;
    a driver reading the camera goes invalid in a scene without one and stays so) and whether
    the final render draws splats (Cycles, EEVEE) or Solid mode's shells (Workbench). Written on
    every preview update and before every render (``render_pre``); a node is only touched when
    its value changes."""
    values = {PIXEL_ANGLE_LABEL: pixel_angle(scene)}
    values[FINAL_SHELLS_LABEL] = 0.0 if scene.render.engine == "BLENDER_WORKBENCH" else 1.0
    for name in (SHADER_NAME, GROUP_NAME):
        tree = bpy.data.node_groups.get(name)
        for label, value in values.items():
            node = tree.nodes.get(label) if tree is not None else None
            if node is not None and abs(node.outputs[0].default_value - value) > 1e-9:
                node.outputs[0].default_value = value


@persistent
def _before_render(scene, _depsgraph=None) -> None:
    sync_scene(scene)


def register() -> None:
    if _before_render not in bpy.app.handlers.render_pre:
        bpy.app.handlers.render_pre.append(_before_render)


def unregister() -> None:
    if _before_render in bpy.app.handlers.render_pre:
        bpy.app.handlers.render_pre.remove(_before_render)


def _screen_blur(nt):
    """The factor ``s**2 / (s**2 + SCREEN_BLUR * w**2)`` on r**2 that widens a Gaussian of
    standard deviation ``s`` (the mean of its axes) as the rasteriser's blur does, where ``w`` is
    a pixel's width at the shaded point (its view depth times the pixel angle)."""
    pixel = nt.nodes.new("ShaderNodeValue")
    pixel.name = pixel.label = PIXEL_ANGLE_LABEL  # sync_scene writes it
    pixel.outputs[0].default_value = DEFAULT_PIXEL_ANGLE
    camera = nt.nodes.new("ShaderNodeCameraData")
    width = _math(nt, "MULTIPLY", camera.outputs["View Z Depth"], pixel.outputs[0])
    blur = _math(nt, "MULTIPLY", _math(nt, "MULTIPLY", width, width), SCREEN_BLUR)
    sigma = _vmath(nt, "DOT_PRODUCT", _attr(nt, "scale").outputs["Vector"], (1 / 3, 1 / 3, 1 / 3))
    s2 = _math(nt, "MULTIPLY", sigma.outputs["Value"], sigma.outputs["Value"])
    return _math(nt, "DIVIDE", s2, _math(nt, "ADD", s2, blur))


def splat_shader() -> bpy.types.ShaderNodeTree:
    """The shader node group every palette material uses (built once per file)."""
    tree = bpy.data.node_groups.get(SHADER_NAME)
    if tree is not None:
        return tree
    nt = bpy.data.node_groups.new(SHADER_NAME, "ShaderNodeTree")
    nt.interface.new_socket("Shader", in_out="OUTPUT", socket_type="NodeSocketShader")
    out = nt.nodes.new("NodeGroupOutput")
    link = nt.links.new

    color = _srgb_to_linear(nt, _attr(nt, "color").outputs["Vector"])
    opacity = _attr(nt, "opacity").outputs["Fac"]
    extent = _attr(nt, "extent").outputs["Fac"]
    falloff = _attr(nt, "falloff").outputs["Fac"]

    # the ray in the instance's space: p on the unit sphere, d the unit direction to the camera
    coords = nt.nodes.new("ShaderNodeTexCoord")
    geo = nt.nodes.new("ShaderNodeNewGeometry")
    to_local = nt.nodes.new("ShaderNodeVectorTransform")
    to_local.vector_type = "VECTOR"
    to_local.convert_from, to_local.convert_to = "WORLD", "OBJECT"
    link(geo.outputs["Incoming"], to_local.inputs["Vector"])
    d = _vmath(nt, "NORMALIZE", to_local.outputs["Vector"]).outputs[0]
    p = coords.outputs["Object"]
    along = _vmath(nt, "DOT_PRODUCT", p, d).outputs["Value"]
    foot = _vmath(nt, "SCALE", d, (0, 0, 0))
    link(along, foot.inputs["Scale"])
    perp = _vmath(nt, "SUBTRACT", p, foot.outputs[0])
    dist = _vmath(nt, "LENGTH", perp.outputs[0]).outputs["Value"]
    r = _math(nt, "MULTIPLY", dist, extent)
    # the final render's shells are widened already (``widened`` 1): no blur on top
    blur = nt.nodes.new("ShaderNodeMix")
    blur.data_type = "FLOAT"
    link(_attr(nt, "widened").outputs["Fac"], blur.inputs["Factor"])
    link(_screen_blur(nt), blur.inputs["A"])
    blur.inputs["B"].default_value = 1.0
    r2 = _math(nt, "MULTIPLY", _math(nt, "MULTIPLY", r, r), blur.outputs["Result"])
    gauss = _math(nt, "EXPONENT", _math(nt, "MULTIPLY", r2, -0.5))
    splat_alpha = _math(nt, "MULTIPLY", _math(nt, "MULTIPLY", gauss, opacity),
                        _math(nt, "SUBTRACT", 1.0, geo.outputs["Backfacing"]))  # fmt: skip
    # falloff 1: the splat alpha; falloff 0: an opaque shell
    mix = nt.nodes.new("ShaderNodeMix")
    mix.data_type = "FLOAT"
    link(falloff, mix.inputs["Factor"])
    mix.inputs["A"].default_value = 1.0
    link(splat_alpha, mix.inputs["B"])
    alpha = mix.outputs["Result"]

    emit = nt.nodes.new("ShaderNodeEmission")
    link(color, emit.inputs["Color"])
    diffuse = nt.nodes.new("ShaderNodeBsdfDiffuse")
    link(color, diffuse.inputs["Color"])
    path = nt.nodes.new("ShaderNodeLightPath")
    lit = nt.nodes.new("ShaderNodeMixShader")  # unlit to the camera, diffuse to everything else
    link(path.outputs["Is Camera Ray"], lit.inputs["Fac"])
    link(diffuse.outputs[0], lit.inputs[1])
    link(emit.outputs[0], lit.inputs[2])
    clear = nt.nodes.new("ShaderNodeBsdfTransparent")
    final = nt.nodes.new("ShaderNodeMixShader")
    link(alpha, final.inputs["Fac"])
    link(clear.outputs[0], final.inputs[1])
    link(lit.outputs[0], final.inputs[2])
    link(final.outputs[0], out.inputs[0])
    for i, node in enumerate(nt.nodes):
        node.location = (180 * (i % 8), -160 * (i // 8))
    return nt


def _palette_material(i: int, rgb, alpha: float = 1.0) -> bpy.types.Material:
    name = PALETTE_MATERIAL.format(i)
    mat = bpy.data.materials.get(name)
    if mat is None:
        mat = bpy.data.materials.new(name)
        mat.use_nodes = True
        nt = mat.node_tree
        nt.nodes.clear()
        group = nt.nodes.new("ShaderNodeGroup")
        group.node_tree = splat_shader()
        out = nt.nodes.new("ShaderNodeOutputMaterial")
        nt.links.new(group.outputs[0], out.inputs["Surface"])
        out.location = (250, 0)
        if hasattr(mat, "surface_render_method"):  # EEVEE: order-independent (dithered) alpha
            mat.surface_render_method = "DITHERED"
    lin = splat_look.srgb_to_linear(rgb)
    mat.diffuse_color = (float(lin[0]), float(lin[1]), float(lin[2]), float(alpha))
    return mat


def _split_group() -> bpy.types.NodeTree:
    """The palette object's own modifier: one instance per material (Split to Instances by
    material index). Evaluated once and cached by the depsgraph, not on every preview update."""
    group = bpy.data.node_groups.get(PALETTE_SPLIT)
    if group is not None:
        return group
    group = bpy.data.node_groups.new(PALETTE_SPLIT, "GeometryNodeTree")
    group.interface.new_socket("Geometry", in_out="INPUT", socket_type="NodeSocketGeometry")
    group.interface.new_socket("Geometry", in_out="OUTPUT", socket_type="NodeSocketGeometry")
    gin, gout = group.nodes.new("NodeGroupInput"), group.nodes.new("NodeGroupOutput")
    split = group.nodes.new("GeometryNodeSplitToInstances")
    split.domain = "FACE"
    group.links.new(gin.outputs[0], split.inputs["Geometry"])
    index = group.nodes.new("GeometryNodeInputMaterialIndex")
    group.links.new(index.outputs[0], split.inputs["Group ID"])
    group.links.new(split.outputs["Instances"], gout.inputs[0])
    gout.location = (400, 0)
    return group


def palette_size(levels: int | None = None) -> int:
    """Palette materials: every colour cell at every Solid-mode coverage level."""
    levels = splat_look.LEVELS if levels is None else levels
    return levels**3 * (len(splat_look.COVERAGE_LEVELS) + 1)


def palette_object(levels: int | None = None) -> bpy.types.Object:
    """``palette_size`` unit ico spheres at the origin, sphere i with palette material i (colour
    cell ``i % levels**3`` at coverage level ``i // levels**3``: its viewport colour's alpha),
    split into one instance each by its modifier (the object lives in no scene: the geometry
    nodes read it through Object Info)."""
    levels = splat_look.LEVELS if levels is None else levels
    obj = bpy.data.objects.get(PALETTE_OBJECT)
    size = palette_size(levels)
    built_as = palette_signature(levels)
    if (
        obj is not None
        and obj.type == "MESH"
        and len(obj.data.materials) == size
        and obj.get(PALETTE_SIGNATURE) == built_as
    ):
        if not obj.modifiers:
            obj.modifiers.new("Split", "NODES").node_group = _split_group()
        return obj
    grid = splat_look.cell_centres(levels)
    alphas = np.repeat(splat_look.palette_alphas(), len(grid))
    centres = np.tile(grid, (len(alphas) // len(grid), 1))
    bm = bmesh.new()
    bmesh.ops.create_icosphere(bm, subdivisions=ICO_SUBDIVISIONS, radius=1.0)
    verts = np.array([v.co[:] for v in bm.verts], dtype=np.float32)
    faces = np.array([[v.index for v in f.verts] for f in bm.faces], dtype=np.int32)
    bm.free()
    n = len(centres)
    nv, nf = len(verts), len(faces)
    mesh = bpy.data.meshes.new(PALETTE_OBJECT)
    mesh.vertices.add(n * nv)
    mesh.vertices.foreach_set("co", np.tile(verts, (n, 1)).ravel())
    tris = (faces[None] + nv * np.arange(n, dtype=np.int32)[:, None, None]).reshape(-1)
    mesh.loops.add(len(tris))
    mesh.loops.foreach_set("vertex_index", tris)
    mesh.polygons.add(n * nf)
    mesh.polygons.foreach_set("loop_start", np.arange(0, len(tris), 3, dtype=np.int32))
    mesh.polygons.foreach_set("material_index", np.repeat(np.arange(n, dtype=np.int32), nf))
    mesh.polygons.foreach_set("use_smooth", np.ones(n * nf, dtype=bool))
    for i in range(n):
        mesh.materials.append(_palette_material(i, centres[i], alphas[i]))
    mesh.update()
    if obj is None:
        obj = bpy.data.objects.new(PALETTE_OBJECT, mesh)
    else:
        obj.data = mesh
    obj[PALETTE_SIGNATURE] = built_as
    if not obj.modifiers:
        obj.modifiers.new("Split", "NODES").node_group = _split_group()
    return obj


PALETTE_SIGNATURE = "stabledreamer_palette"
"""The palette object's property naming what it was built for (``palette_signature``): a .blend
saved by an add-on with other colour or coverage levels of the same count is rebuilt, not
reused with the wrong colours or alphas."""


def palette_signature(levels: int) -> str:
    alphas = ",".join(f"{a:.6f}" for a in splat_look.palette_alphas())
    return f"{levels} colour levels; alphas {alphas}"


_shown: dict[int, np.ndarray] = {}
"""The palette colours last written, by palette mesh (reading them back costs more)."""


PALETTE_WRITES = 16
"""At most this many palette materials are written per update (a colour cell's at every coverage
level together), the largest changes first (the rest on the next updates): each write
re-evaluates a material, and a stream's first updates or a sudden change would otherwise write
dozens at a time (~1-2 ms per update for 40 of them)."""


def set_palette_colors(
    rgb_by_cell, changed_only: float = 1.0 / 128.0, limit: int | None = PALETTE_WRITES
) -> int:
    """Show each colour cell's colour (sRGB ``[levels**3, 3]``) in Solid mode, at every coverage
    level; returns how many cells changed by more than ``changed_only`` (linear; 1/128 is under
    2/255 in sRGB from mid-grey up) and were written (each write costs a material update per
    coverage level): at most ``limit`` materials' worth, the largest changes first."""
    mats = palette_object().data.materials
    lin = splat_look.srgb_to_linear(rgb_by_cell)
    cells = len(lin)
    key = mats.id_data.as_pointer()
    last = _shown.get(key)
    if last is None or last.shape != lin.shape:  # the first colours of this session: all of them
        last = np.array([m.diffuse_color[:3] for m in mats[:cells]], dtype=np.float32)
        limit = None
    alphas = splat_look.palette_alphas()
    diff = np.abs(lin - last).max(axis=1)
    changed = np.flatnonzero(diff > changed_only)
    if limit is not None:
        limit = max(1, limit // len(alphas))
        if len(changed) > limit:
            changed = changed[np.argsort(-diff[changed], kind="stable")[:limit]]
    for i in changed:
        r, g, b = (float(x) for x in lin[i])
        for level, a in enumerate(alphas):
            mats[int(i) + level * cells].diffuse_color = (r, g, b, float(a))
    last[changed] = lin[changed]
    _shown[key] = last
    return len(changed)


# --------------------------------------------------------------------------- geometry nodes


def _points_material() -> bpy.types.Material:
    mat = bpy.data.materials.get(POINTS_MATERIAL_NAME)
    if mat is not None:
        return mat
    mat = bpy.data.materials.new(POINTS_MATERIAL_NAME)
    mat.use_nodes = True
    nt = mat.node_tree
    nt.nodes.clear()
    out = nt.nodes.new("ShaderNodeOutputMaterial")
    emit = nt.nodes.new("ShaderNodeEmission")
    col = _attr(nt, "color", "GEOMETRY")
    nt.links.new(_srgb_to_linear(nt, col.outputs["Vector"]), emit.inputs["Color"])
    nt.links.new(emit.outputs[0], out.inputs["Surface"])
    return mat


def _named(nt, name: str, data_type: str):
    node = nt.nodes.new("GeometryNodeInputNamedAttribute")
    node.data_type = data_type
    node.inputs["Name"].default_value = name
    return node.outputs["Attribute"]


def _store(nt, geometry, name: str, data_type: str, value):
    node = nt.nodes.new("GeometryNodeStoreNamedAttribute")
    node.data_type = data_type
    node.domain = "INSTANCE"
    node.inputs["Name"].default_value = name
    nt.links.new(geometry, node.inputs["Geometry"])
    nt.links.new(value, node.inputs["Value"])
    return node.outputs["Geometry"]


def _switch(nt, kind: str, condition, if_true, if_false):
    node = nt.nodes.new("GeometryNodeSwitch")
    node.input_type = kind
    nt.links.new(condition, node.inputs["Switch"])
    for name, value in (("True", if_true), ("False", if_false)):
        if isinstance(value, bpy.types.NodeSocket):
            nt.links.new(value, node.inputs[name])
        else:
            node.inputs[name].default_value = value
    return node.outputs["Output"]


RENDER_SHELL = 1.258
"""The final render's shell scale: the 20-face ico sphere's faces lie inside its unit vertices
(their centres at 0.795), so a shell of vertices at 1.258 encloses the whole k-sigma sphere and
the splat shader's falloff is not cut at the facets (``bench/preview_fidelity.py``: Cycles 24.5
against 23.1 dB with the inscribed shell; Solid mode prefers the inscribed one, 25.4 against
21.3, so the viewport keeps it)."""


def _or(nt, a, b):
    node = nt.nodes.new("FunctionNodeBooleanMath")
    node.operation = "OR"
    nt.links.new(a, node.inputs[0])
    nt.links.new(b, node.inputs[1])
    return node.outputs[0]


def _plain_renders(nt):
    """True when the scene renders with Workbench: its final render then draws the viewport's
    opaque shells, as Solid mode does (the Final Shells node, written by ``sync_scene``)."""
    value = nt.nodes.new("ShaderNodeValue")
    value.name = value.label = FINAL_SHELLS_LABEL
    value.outputs[0].default_value = 1.0
    below = nt.nodes.new("FunctionNodeCompare")
    below.data_type, below.operation = "FLOAT", "LESS_THAN"
    nt.links.new(value.outputs[0], below.inputs["A"])
    below.inputs["B"].default_value = 0.5
    return below.outputs["Result"]


def _render_shells(nt, scale, factor):
    """Each Gaussian's shell in the final render: its axes widened as ``render()`` widens every
    projected Gaussian (``SCREEN_BLUR`` pixels squared added to its covariance; adding it to
    every axis in 3D adds it on screen), with a pixel's width at the Gaussian's depth from the
    scene camera (its Pixel Angle node, written by ``sync_scene``), and enclosing its k-sigma
    sphere (``RENDER_SHELL``). Returns (instance scale, the extent the shader reads)."""
    camera = nt.nodes.new("GeometryNodeObjectInfo")
    camera.transform_space = "RELATIVE"  # the camera in this object's space
    nt.links.new(nt.nodes.new("GeometryNodeInputActiveCamera").outputs[0], camera.inputs[0])
    forward = nt.nodes.new("FunctionNodeRotateVector")
    forward.inputs["Vector"].default_value = (0.0, 0.0, -1.0)
    nt.links.new(camera.outputs["Rotation"], forward.inputs["Rotation"])
    position = nt.nodes.new("GeometryNodeInputPosition").outputs[0]
    offset = _vmath(nt, "SUBTRACT", position, camera.outputs["Location"]).outputs[0]
    depth = _vmath(nt, "DOT_PRODUCT", offset, forward.outputs[0]).outputs["Value"]
    pixel = nt.nodes.new("ShaderNodeValue")
    pixel.name = pixel.label = PIXEL_ANGLE_LABEL  # sync_scene writes it
    pixel.outputs[0].default_value = DEFAULT_PIXEL_ANGLE
    width = _math(nt, "MULTIPLY", depth, pixel.outputs[0])
    blur = _math(nt, "MULTIPLY", _math(nt, "MULTIPLY", width, width), SCREEN_BLUR)
    var = _vmath(nt, "MULTIPLY", scale, scale).outputs[0]
    blurred = nt.nodes.new("ShaderNodeVectorMath")
    blurred.operation = "ADD"
    nt.links.new(var, blurred.inputs[0])
    combine = nt.nodes.new("ShaderNodeCombineXYZ")
    for axis in "XYZ":
        nt.links.new(blur, combine.inputs[axis])
    nt.links.new(combine.outputs[0], blurred.inputs[1])
    sigma = _vmath(nt, "POWER", blurred.outputs[0], (0.5, 0.5, 0.5)).outputs[0]
    extent = _math(nt, "MULTIPLY", factor, RENDER_SHELL)
    shell = _vmath(nt, "SCALE", sigma, (0, 0, 0))
    nt.links.new(extent, shell.inputs["Scale"])
    return shell.outputs[0], extent


def gaussian_group() -> bpy.types.NodeTree:
    """The geometry-nodes group (built once per file, then reused)."""
    group = bpy.data.node_groups.get(GROUP_NAME)
    if group is not None:
        return group
    group = bpy.data.node_groups.new(GROUP_NAME, "GeometryNodeTree")
    iface = group.interface
    iface.new_socket("Geometry", in_out="INPUT", socket_type="NodeSocketGeometry")
    size = iface.new_socket("Extent Scale", in_out="INPUT", socket_type="NodeSocketFloat")
    size.default_value, size.min_value = 1.0, 0.0
    iface.new_socket("Points Only", in_out="INPUT", socket_type="NodeSocketBool")
    iface.new_socket("Keep All", in_out="INPUT", socket_type="NodeSocketBool")
    splat = iface.new_socket("Splat Shading", in_out="INPUT", socket_type="NodeSocketBool")
    splat.default_value = True
    iface.new_socket("Palette", in_out="INPUT", socket_type="NodeSocketObject")
    iface.new_socket("Geometry", in_out="OUTPUT", socket_type="NodeSocketGeometry")

    nt = group
    link = nt.links.new
    gin = nt.nodes.new("NodeGroupInput")
    gout = nt.nodes.new("NodeGroupOutput")

    extent = _named(nt, "extent", "FLOAT")
    factor = _math(nt, "MULTIPLY", extent, gin.outputs["Extent Scale"])
    scale = _named(nt, "scale", "FLOAT_VECTOR")
    sized = _vmath(nt, "SCALE", scale, (0, 0, 0))
    link(factor, sized.inputs["Scale"])
    # the final render (F12) draws each Gaussian as render() does (see _render_shells); the
    # viewport keeps the plain shells, which Solid mode shows best and which cost less
    opaque = nt.nodes.new("FunctionNodeBooleanMath")  # the Ellipsoids look: opaque shells
    opaque.operation = "NOT"
    link(gin.outputs["Splat Shading"], opaque.inputs[0])
    plain = _or(nt, _plain_renders(nt), opaque.outputs[0])
    viewport = _or(nt, nt.nodes.new("GeometryNodeIsViewport").outputs[0], plain)
    final_scale, final_extent = _render_shells(nt, scale, factor)
    shell = _switch(nt, "VECTOR", viewport, sized.outputs[0], final_scale)
    stored_extent = _switch(nt, "FLOAT", viewport, factor, final_extent)
    widened = _switch(nt, "FLOAT", viewport, 0.0, 1.0)

    # the palette (one instance per material), picked by the point's cell
    info = nt.nodes.new("GeometryNodeObjectInfo")
    link(gin.outputs["Palette"], info.inputs["Object"])
    # objects that keep every Gaussian (imported files) draw those with extent > 0; the live
    # preview leaves the others out of its mesh, and a constant selection costs nothing
    visible = nt.nodes.new("FunctionNodeCompare")
    visible.data_type, visible.operation = "FLOAT", "GREATER_THAN"
    link(extent, visible.inputs["A"])
    visible.inputs["B"].default_value = 0.0
    selection = nt.nodes.new("GeometryNodeSwitch")
    selection.input_type = "BOOLEAN"
    link(gin.outputs["Keep All"], selection.inputs["Switch"])
    selection.inputs["False"].default_value = True
    link(visible.outputs["Result"], selection.inputs["True"])
    inst = nt.nodes.new("GeometryNodeInstanceOnPoints")
    link(selection.outputs["Output"], inst.inputs["Selection"])
    link(gin.outputs[0], inst.inputs["Points"])
    link(info.outputs["Geometry"], inst.inputs["Instance"])
    inst.inputs["Pick Instance"].default_value = True
    link(_named(nt, "cell", "INT"), inst.inputs["Instance Index"])
    link(_named(nt, "rot", "QUATERNION"), inst.inputs["Rotation"])
    link(shell, inst.inputs["Scale"])
    geo = inst.outputs["Instances"]  # the point attributes (color, opacity) carry over
    geo = _store(nt, geo, "extent", "FLOAT", stored_extent)
    geo = _store(nt, geo, "falloff", "FLOAT", gin.outputs["Splat Shading"])
    geo = _store(nt, geo, "widened", "FLOAT", widened)

    # plain points: radius = the mean of the sized axes
    mean = _vmath(nt, "DOT_PRODUCT", sized.outputs[0], (1 / 3, 1 / 3, 1 / 3))
    to_points = nt.nodes.new("GeometryNodeMeshToPoints")
    to_points.mode = "VERTICES"
    link(gin.outputs[0], to_points.inputs["Mesh"])
    link(selection.outputs["Output"], to_points.inputs["Selection"])
    link(mean.outputs["Value"], to_points.inputs["Radius"])
    pts_mat = nt.nodes.new("GeometryNodeSetMaterial")
    pts_mat.inputs["Material"].default_value = _points_material()
    link(to_points.outputs["Points"], pts_mat.inputs["Geometry"])

    switch = nt.nodes.new("GeometryNodeSwitch")
    switch.input_type = "GEOMETRY"
    link(gin.outputs["Points Only"], switch.inputs["Switch"])
    link(geo, switch.inputs["False"])
    link(pts_mat.outputs["Geometry"], switch.inputs["True"])
    link(switch.outputs["Output"], gout.inputs[0])
    for i, node in enumerate(nt.nodes):
        node.location = (200 * (i % 8), -200 * (i // 8))
    return group


_socket_ids: dict[tuple[int, str], str] = {}


def socket_id(group: bpy.types.NodeTree, name: str) -> str:
    """The modifier key of a group input (``Socket_N`` in Blender 4.x/5.x), cached: the lookup
    by name costs more than the rest of a small update."""
    key = (group.as_pointer(), name)
    ident = _socket_ids.get(key)
    if ident is None:
        ident = _socket_ids[key] = group.interface.items_tree[name].identifier
    return ident
