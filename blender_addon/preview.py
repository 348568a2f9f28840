"""The live preview object: Gaussians as instanced ellipsoids (geometry nodes).

One mesh object holds a vertex per Gaussian with point attributes written by ``foreach_set``:

``position`` (the vertex coordinates), ``scale`` FLOAT_VECTOR (standard deviations, linear),
``rot`` QUATERNION (w, x, y, z), ``color`` FLOAT_COLOR (sRGB base colour as stored on the wire,
alpha = opacity), ``opacity`` FLOAT.

A geometry-nodes modifier instances an ico sphere on every point, scaled by ``scale`` times the
group's ``Size`` input (sigmas per radius) and rotated by ``rot``; the colour and opacity are stored
on the INSTANCE domain and a material reads them with an Attribute node of type INSTANCER. Above
``point_cap`` Gaussians the same group switches to plain points (Mesh to Points, radius from the
scale), which the viewport draws far faster than instanced meshes.

The object and its mesh are reused between updates (updated in place): the same count only
rewrites the attributes; a new count rebuilds the mesh's geometry. Input: plain numpy arrays, as
``stabledreamer_protocol`` ``Preview.gaussians()`` returns them.
"""

from __future__ import annotations

import bpy
import numpy as np

OBJECT_NAME = "StableDreamer Preview"
GROUP_NAME = "StableDreamer Ellipsoids"
MATERIAL_NAME = "StableDreamer Splat"
POINTS_MATERIAL_NAME = "StableDreamer Splat Points"
MODIFIER_NAME = "StableDreamer Ellipsoids"
DEFAULT_POINT_CAP = 200_000
DEFAULT_SIZE = 2.0
"""Ellipsoid radius in standard deviations (2 sigma covers ~86 % of a 2D Gaussian's mass)."""

ATTRIBUTES = {
    # name: (data type, foreach_set key, components)
    "scale": ("FLOAT_VECTOR", "vector", 3),
    "rot": ("QUATERNION", "value", 4),
    "color": ("FLOAT_COLOR", "color", 4),
    "opacity": ("FLOAT", "value", 1),
}


# --------------------------------------------------------------------------- node group / material


def _attribute_material(name: str, attribute_type: str) -> bpy.types.Material:
    mat = bpy.data.materials.get(name)
    if mat is not None:
        return mat
    mat = bpy.data.materials.new(name)
    mat.use_nodes = True
    nt = mat.node_tree
    nt.nodes.clear()
    out = nt.nodes.new("ShaderNodeOutputMaterial")
    bsdf = nt.nodes.new("ShaderNodeBsdfPrincipled")
    col = nt.nodes.new("ShaderNodeAttribute")
    col.attribute_type = attribute_type
    col.attribute_name = "color"
    opa = nt.nodes.new("ShaderNodeAttribute")
    opa.attribute_type = attribute_type
    opa.attribute_name = "opacity"
    nt.links.new(col.outputs["Color"], bsdf.inputs["Base Color"])
    nt.links.new(opa.outputs["Fac"], bsdf.inputs["Alpha"])
    nt.links.new(bsdf.outputs["BSDF"], out.inputs["Surface"])
    col.location, opa.location, bsdf.location, out.location = (
        (-400, 100),
        (-400, -150),
        (0, 0),
        (300, 0),
    )
    if hasattr(mat, "surface_render_method"):  # EEVEE Next (4.2+)
        mat.surface_render_method = "BLENDED"
    return mat


def _named(nt, name: str, data_type: str):
    node = nt.nodes.new("GeometryNodeInputNamedAttribute")
    node.data_type = data_type
    node.inputs["Name"].default_value = name
    return node


def ellipsoid_group() -> bpy.types.NodeTree:
    """The geometry-nodes group (built once per file, then reused)."""
    group = bpy.data.node_groups.get(GROUP_NAME)
    if group is not None:
        return group
    group = bpy.data.node_groups.new(GROUP_NAME, "GeometryNodeTree")
    iface = group.interface
    iface.new_socket("Geometry", in_out="INPUT", socket_type="NodeSocketGeometry")
    size = iface.new_socket("Size", in_out="INPUT", socket_type="NodeSocketFloat")
    size.default_value = DEFAULT_SIZE
    size.min_value = 0.0
    points = iface.new_socket("Points Only", in_out="INPUT", socket_type="NodeSocketBool")
    points.default_value = False
    iface.new_socket("Geometry", in_out="OUTPUT", socket_type="NodeSocketGeometry")

    nt = group
    gin = nt.nodes.new("NodeGroupInput")
    gout = nt.nodes.new("NodeGroupOutput")
    link = nt.links.new

    scale = _named(nt, "scale", "FLOAT_VECTOR")
    rot = _named(nt, "rot", "QUATERNION")
    color = _named(nt, "color", "FLOAT_COLOR")
    opacity = _named(nt, "opacity", "FLOAT")

    sized = nt.nodes.new("ShaderNodeVectorMath")
    sized.operation = "SCALE"
    link(scale.outputs["Attribute"], sized.inputs[0])
    link(gin.outputs["Size"], sized.inputs["Scale"])

    # ellipsoids: ico sphere (radius 1) instanced on every point
    ico = nt.nodes.new("GeometryNodeMeshIcoSphere")
    ico.inputs["Radius"].default_value = 1.0
    ico.inputs["Subdivisions"].default_value = 1
    ico_mat = nt.nodes.new("GeometryNodeSetMaterial")
    ico_mat.inputs["Material"].default_value = _attribute_material(MATERIAL_NAME, "INSTANCER")
    link(ico.outputs["Mesh"], ico_mat.inputs["Geometry"])
    inst = nt.nodes.new("GeometryNodeInstanceOnPoints")
    link(gin.outputs[0], inst.inputs["Points"])
    link(ico_mat.outputs["Geometry"], inst.inputs["Instance"])
    link(rot.outputs["Attribute"], inst.inputs["Rotation"])
    link(sized.outputs["Vector"], inst.inputs["Scale"])
    store_col = nt.nodes.new("GeometryNodeStoreNamedAttribute")
    store_col.data_type = "FLOAT_COLOR"
    store_col.domain = "INSTANCE"
    store_col.inputs["Name"].default_value = "color"
    link(inst.outputs["Instances"], store_col.inputs["Geometry"])
    link(color.outputs["Attribute"], store_col.inputs["Value"])
    store_opa = nt.nodes.new("GeometryNodeStoreNamedAttribute")
    store_opa.data_type = "FLOAT"
    store_opa.domain = "INSTANCE"
    store_opa.inputs["Name"].default_value = "opacity"
    link(store_col.outputs["Geometry"], store_opa.inputs["Geometry"])
    link(opacity.outputs["Attribute"], store_opa.inputs["Value"])

    # plain points: radius = Size * the mean standard deviation
    mean = nt.nodes.new("ShaderNodeVectorMath")
    mean.operation = "DOT_PRODUCT"
    link(sized.outputs["Vector"], mean.inputs[0])
    mean.inputs[1].default_value = (1.0 / 3.0, 1.0 / 3.0, 1.0 / 3.0)
    to_points = nt.nodes.new("GeometryNodeMeshToPoints")
    to_points.mode = "VERTICES"
    link(gin.outputs[0], to_points.inputs["Mesh"])
    link(mean.outputs["Value"], to_points.inputs["Radius"])
    pts_mat = nt.nodes.new("GeometryNodeSetMaterial")
    pts_mat.inputs["Material"].default_value = _attribute_material(POINTS_MATERIAL_NAME, "GEOMETRY")
    link(to_points.outputs["Points"], pts_mat.inputs["Geometry"])

    switch = nt.nodes.new("GeometryNodeSwitch")
    switch.input_type = "GEOMETRY"
    link(gin.outputs["Points Only"], switch.inputs["Switch"])
    link(store_opa.outputs["Geometry"], switch.inputs["False"])
    link(pts_mat.outputs["Geometry"], switch.inputs["True"])
    link(switch.outputs["Output"], gout.inputs[0])

    for i, node in enumerate(nt.nodes):
        node.location = (200 * (i % 6), -200 * (i // 6))
    return group


def socket_id(group: bpy.types.NodeTree, name: str) -> str:
    """The modifier key of a group input (``Socket_N`` in Blender 4.x/5.x)."""
    return group.interface.items_tree[name].identifier


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
    """A new, empty object with the ellipsoid modifier (Blender makes the name unique)."""
    mesh = bpy.data.meshes.new(name)
    obj = bpy.data.objects.new(name, mesh)
    (collection or bpy.context.scene.collection).objects.link(obj)
    mod = obj.modifiers.new(MODIFIER_NAME, "NODES")
    mod.node_group = ellipsoid_group()
    return obj


def _modifier(obj: bpy.types.Object) -> bpy.types.NodesModifier:
    mod = obj.modifiers.get(MODIFIER_NAME)
    if mod is None:
        mod = obj.modifiers.new(MODIFIER_NAME, "NODES")
    if mod.node_group is None:
        mod.node_group = ellipsoid_group()
    return mod


def update_preview(
    means,
    scales,
    quats,
    rgb,
    opacities,
    *,
    log_scales: bool = False,
    point_cap: int = DEFAULT_POINT_CAP,
    size: float | None = None,
    obj: bpy.types.Object | None = None,
) -> bpy.types.Object:
    """Write N Gaussians into the preview object (created if needed) and return it.

    ``means [N,3]``, ``scales [N,3]`` (standard deviations; natural logs when ``log_scales``),
    ``quats [N,4]`` (w, x, y, z), ``rgb [N,3]`` (sRGB in [0, 1]), ``opacities [N]`` in [0, 1].
    More than ``point_cap`` Gaussians switch the modifier to plain points.
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

    obj = obj or preview_object()
    mesh = obj.data
    if len(mesh.vertices) != n:
        mesh.clear_geometry()
        mesh.vertices.add(n)
    attrs = mesh.attributes
    for name, (dtype, _key, _c) in ATTRIBUTES.items():
        a = attrs.get(name)
        if a is not None and (a.data_type != dtype or a.domain != "POINT"):
            attrs.remove(a)
            a = None
        if a is None:
            attrs.new(name, dtype, "POINT")

    colors = np.empty((n, 4), dtype=np.float32)
    colors[:, :3] = rgb
    colors[:, 3] = opacities
    mesh.attributes["position"].data.foreach_set("vector", np.ascontiguousarray(means).ravel())
    values = {"scale": scales, "rot": quats, "color": colors, "opacity": opacities}
    for name, (_dtype, key, _c) in ATTRIBUTES.items():
        mesh.attributes[name].data.foreach_set(key, values[name].ravel())
    mesh.update()

    mod = _modifier(obj)
    group = mod.node_group
    points_only = n > point_cap
    key = socket_id(group, "Points Only")
    if bool(mod[key]) != points_only:
        mod[key] = points_only
    if size is not None:
        mod[socket_id(group, "Size")] = float(size)
    obj.update_tag()
    return obj


def update_from_preview(preview, **kw) -> bpy.types.Object:
    """Update from a protocol ``Preview`` message (anything with ``gaussians()``)."""
    g = preview.gaussians()
    return update_preview(g["means"], g["scales"], g["quats"], g["rgb"], g["opacities"], **kw)


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
