"""What the artist sees (issue 13): the Gaussians' extents and Solid-mode palette (numpy), the look
preference and .ply import in Blender, and Blender's own picture of a small set of Gaussians
scored against the project's ``render()`` (the check behind ``bench/preview_fidelity.py``)."""

from __future__ import annotations

import importlib.util
import sys
from types import SimpleNamespace

import numpy as np
import pytest
from addon_helpers import ROOT, needs_bpy, run_blender


def _load(name: str, path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


SL = _load("splat_look_under_test", ROOT / "blender_addon" / "splat_look.py")  # numpy only


def test_extent_ends_where_alpha_falls_to_the_threshold():
    o = np.array([0.999, 0.9, 0.5, 0.2, 0.1, 0.05, 0.01], dtype=np.float32)
    k = SL.extents(o, 0.1)
    shown = o > 0.1
    assert (k[~shown] == 0).all()  # fainter than the threshold everywhere: left out
    edge = o * np.exp(-(k**2) / 2)
    uncapped = shown & (k < SL.MAX_SIGMAS)
    np.testing.assert_allclose(edge[uncapped], 0.1, rtol=1e-4)
    assert k.max() <= SL.MAX_SIGMAS
    wide = SL.extents(o, SL.SPLAT_ALPHA)
    assert (wide >= k).all() and (wide[o > SL.SPLAT_ALPHA] > 0).all()
    assert np.isclose(SL.extents([0.999], 1e-6)[0], SL.MAX_SIGMAS)  # capped at 3 sigma
    with pytest.raises(ValueError):
        SL.extents(o, 0.0)


def test_palette_cells_and_their_mean_colours():
    rgb = np.array([[0, 0, 0], [1, 1, 1], [0.95, 0.02, 0.03], [0.99, 0.0, 0.06]], np.float32)
    c = SL.cells(rgb)
    assert c[0] == 0 and c[1] == SL.LEVELS**3 - 1 and c[2] == c[3]
    grid = SL.cell_centres()
    np.testing.assert_allclose(grid[c], np.rint(rgb * (SL.LEVELS - 1)) / (SL.LEVELS - 1))
    shown = SL.cell_colors(rgb, c)
    np.testing.assert_allclose(shown[c[2]], rgb[2:].mean(0), atol=1e-6)
    empty = np.setdiff1d(np.arange(SL.LEVELS**3), c)
    np.testing.assert_allclose(shown[empty], grid[empty])
    np.testing.assert_allclose(SL.srgb_to_linear([0.0, 0.5, 1.0]), [0.0, 0.21404, 1.0], atol=1e-4)


def test_faint_gaussians_take_transparent_shells_as_opaque_as_they_are_on_average():
    a = SL.SHELL_ALPHA  # just above the shell's threshold, then fainter to opaque
    o = np.sort(np.array([1.05 * a, 2.5 * a, 0.3, 0.45, 0.6, SL.OPAQUE_FROM, 0.999], np.float32))
    k = SL.extents(o)
    # the mean of o * exp(-r^2 / 2) over the disc of radius k, numerically, times the gain
    r = (np.arange(4000) + 0.5)[None, :] / 4000 * k[:, None]  # midpoints of rings
    g = o[:, None] * np.exp(-(r**2) / 2)
    mean = (g * r).sum(1) * (k / 4000) / np.maximum(k**2 / 2, 1e-12)
    np.testing.assert_allclose(SL.coverage(o, k, gain=1.0), mean, rtol=1e-3)
    assert np.isclose(SL.coverage([0.5], [0.0], gain=1.0)[0], 0.5)  # a point: its opacity
    lv = SL.solid_levels(o)
    opaque = len(SL.COVERAGE_LEVELS)
    assert (np.diff(lv) >= 0).all()
    assert (lv[o >= SL.OPAQUE_FROM] == opaque).all() and (lv[o < SL.OPAQUE_FROM] < opaque).all()
    # each transparent Gaussian's level is the nearest (in log space) to its coverage
    m = SL.coverage(o, k)[: len(o) - 2]
    nearest = np.abs(np.log(m[:, None] / np.array(SL.COVERAGE_LEVELS)[None])).argmin(1)
    np.testing.assert_array_equal(lv[: len(o) - 2], nearest)
    # a closed shell is drawn twice (front and back face): the material alpha composes to it
    a = SL.palette_alphas()
    assert a[-1] == 1.0 and (a[:-1] < 1).all()
    np.testing.assert_allclose(1 - (1 - a[:-1]) ** 2, SL.COVERAGE_LEVELS, rtol=1e-5)
    # a palette cell carries the level; the colour is shared by every level
    rgb = np.array([[0.95, 0.02, 0.03]] * 2, np.float32)
    c = SL.cells(rgb, solid_level=np.array([0, opaque]))
    assert c[1] - c[0] == opaque * SL.LEVELS**3
    np.testing.assert_allclose(SL.cell_colors(rgb, c)[c[0]], rgb[0], atol=1e-6)


SCRIPT = r"""
install()
mod = importlib.import_module(ADDON)
P, prefs = mod.preview, mod.prefs.get_prefs()

def state(obj):
    dg = bpy.context.evaluated_depsgraph_get()
    dg.update()
    geo = obj.evaluated_get(dg).evaluated_geometry()
    inst, pc = geo.instances_pointcloud(), geo.pointcloud
    mod_ = obj.modifiers[P.MODIFIER_NAME]
    ids = {i.name: i.identifier for i in mod_.node_group.interface.items_tree
           if i.item_type == "SOCKET" and i.in_out == "INPUT"}
    return {
        "instances": len(inst.points) if inst is not None else 0,
        "points": len(pc.points) if pc is not None else 0,
        "splat": bool(mod_[ids["Splat Shading"]]),
        "attrs": sorted(a.name for a in inst.attributes) if inst is not None else [],
    }

g = P.demo_gaussians(400, seed=1)
g["opacities"][:100] = 0.01  # below the default shell opacity (0.02): left out
g["rgb"][100:] = (0.9, 0.1, 0.1)
obj = P.update_preview(**g)
out["default"] = state(obj)
# as the session decodes a preview: colour and opacity in one [N, 4] array, written as it is
rgba = np.concatenate([g["rgb"], g["opacities"][:, None]], axis=1).astype(np.float32)
obj = P.update_from_gaussians({**g, "rgba": rgba, "rgb": rgba[:, :3], "opacities": rgba[:, 3]})
obj.data.attributes["color"].data.foreach_get("color", col := np.empty(300 * 4, np.float32))
out["rgba_written"] = float(np.abs(col.reshape(-1, 4) - rgba[100:]).max())
out["rgba_state"] = state(obj)
out["look_default"] = prefs.preview_look
cell = int(mod.splat_look.cells(g["rgb"][100:101])[0])
mat = bpy.data.materials[mod.splat_nodes.PALETTE_MATERIAL.format(cell)]
out["cell_color"] = list(mat.diffuse_color)
obj.data.attributes["cell"].data.foreach_get("value", cells := np.empty(300, np.int32))
obj.data.attributes["opacity"].data.foreach_get("value", opac := np.empty(300, np.float32))
out["opacity_alpha"] = [[float(o), bpy.data.materials[mod.splat_nodes.PALETTE_MATERIAL.format(
    int(c))].diffuse_color[3]] for o, c in zip(opac, cells)]
prefs.shell_alpha = 0.005  # the update callback restyles the objects in the file
out["low_shell"] = state(obj)
obj = P.update_preview(**g)  # the next update draws the ones left out before
out["low_shell_next"] = state(obj)
prefs.preview_look = "POINTS"
out["points"] = state(obj)
prefs.preview_look = "ELLIPSOIDS"
out["ellipsoids"] = state(obj)
SLk = mod.splat_look
opaque_from = len(SLk.COVERAGE_LEVELS) * SLk.LEVELS**3  # the first opaque palette entry
obj.data.attributes["cell"].data.foreach_get("value", cells := np.empty(400, np.int32))
out["ellipsoids_opaque"] = bool((cells >= opaque_from).all())  # restyled: every shell opaque
prefs.preview_look = "SPLATS"
obj.data.attributes["cell"].data.foreach_get("value", cells)
out["splats_transparent"] = int((cells < opaque_from).sum())

# a 3DGS .ply from another tool: ASCII, normals, degree-3 spherical harmonics
n = 50
names = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
names += [f"f_rest_{i}" for i in range(45)] + ["opacity", "scale_0", "scale_1", "scale_2"]
names += ["rot_0", "rot_1", "rot_2", "rot_3"]
rng = np.random.default_rng(0)
rows = rng.normal(size=(n, len(names))) * 0.1
rows[:, names.index("opacity")] = 3.0
rows[:10, names.index("opacity")] = -8.0  # opacity 0.0003: kept in the object, not drawn
rows[:, [names.index(f"scale_{i}") for i in range(3)]] = -3.0

def write(path, names, rows, extra=""):
    head = ["ply", "format ascii 1.0", f"element vertex {len(rows)}"]
    head += [f"property float {p}" for p in names]
    with open(path, "w") as f:
        f.write("\n".join(head) + "\n" + extra + "end_header\n")
        np.savetxt(f, rows, fmt="%.6f")

tmp = os.path.dirname(result_path)
write(os.path.join(tmp, "sh3.ply"), names, rows)
sh3 = os.path.join(tmp, "sh3.ply")
out["import_sh3"] = sorted(bpy.ops.stabledreamer.import_gaussians(filepath=sh3))
imported = [o for o in bpy.data.objects if o.name.startswith("sh3")]
out["sh3_n"] = len(imported[0].data.vertices) if imported else 0
out["sh3_state"] = state(imported[0]) if imported else None
errors = {}
bad = [p for p in names if p != "f_rest_44"]
write(os.path.join(tmp, "bad_sh.ply"), bad, rows[:, : len(bad)])
packed = ["packed_position", "packed_rotation", "packed_scale", "packed_color"]
write(os.path.join(tmp, "packed.ply"), packed, rows[:, :4])
for name in ("bad_sh", "packed"):
    try:
        mod.gaussian_ply.read(os.path.join(tmp, name + ".ply"))
    except mod.gaussian_ply.GaussianPlyError as exc:
        errors[name] = str(exc)
out["errors"] = errors

# one click: Solid mode coloured by material again
screen = next(s for s in bpy.data.screens if any(a.type == "VIEW_3D" for a in s.areas))
area = next(a for a in screen.areas if a.type == "VIEW_3D")
area.spaces.active.shading.color_type = "OBJECT"
with bpy.context.temp_override(screen=screen, area=area, space_data=area.spaces.active):
    out["hidden_before"] = mod.viewport_look.colors_hidden(bpy.context)
    out["show_colors"] = sorted(bpy.ops.stabledreamer.show_gaussian_colors())
out["color_type"] = area.spaces.active.shading.color_type
bpy.context.scene.render.engine = "CYCLES"
bpy.context.scene.cycles.transparent_max_bounces = 8
out["bounces_short"] = mod.viewport_look.bounces_short(bpy.context.scene)
bpy.ops.stabledreamer.splat_render_settings()
out["bounces"] = bpy.context.scene.cycles.transparent_max_bounces

# what the node trees cannot read themselves, written before every render (render_pre)
N, scene = mod.splat_nodes, bpy.context.scene
hooks = [h for h in bpy.app.handlers.render_pre if getattr(h, "__name__", "") == "_before_render"]
out["render_hooks"] = len(hooks)
group = bpy.data.node_groups[N.GROUP_NAME]
out["final_shells"] = {}
for engine in ("BLENDER_WORKBENCH", "CYCLES", "BLENDER_EEVEE"):
    scene.render.engine = engine
    for h in hooks:
        h(scene)
    out["final_shells"][engine] = group.nodes[N.FINAL_SHELLS_LABEL].outputs[0].default_value
cam = bpy.data.objects.new("Cam", bpy.data.cameras.new("Cam"))
scene.collection.objects.link(cam)
scene.camera = cam
scene.render.resolution_y, scene.render.resolution_percentage = 540, 100
for h in hooks:
    h(scene)
shader = bpy.data.node_groups[N.SHADER_NAME]
out["pixel_angle"] = [t.nodes[N.PIXEL_ANGLE_LABEL].outputs[0].default_value
                      for t in (group, shader)]
out["pixel_angle_expected"] = 2 * __import__("math").tan(cam.data.angle_y / 2) / 540
SN = mod.splat_nodes
pal = bpy.data.objects[SN.PALETTE_OBJECT]
out["palette_signed"] = pal.get(SN.PALETTE_SIGNATURE) == SN.palette_signature(mod.splat_look.LEVELS)
pal[SN.PALETTE_SIGNATURE] = "an older add-on's levels"  # as if from a .blend saved by it
kept = pal.data.name
out["palette_rebuilt"] = SN.palette_object().data.name != kept
out["palette_reused"] = SN.palette_object().data.name == pal.data.name
save()
"""


@needs_bpy
def test_look_preference_import_and_one_click_fixes(addon_zip, tmp_path):
    r = run_blender(SCRIPT, addon_zip, tmp_path)
    assert r["look_default"] == "SPLATS"
    # a palette built for other levels of the same size is rebuilt; the right one is reused
    assert r["palette_signed"] and r["palette_rebuilt"] and r["palette_reused"]
    d = r["default"]
    assert d["instances"] == 300 and d["points"] == 0 and d["splat"] is True
    assert {"color", "opacity", "extent", "falloff"} <= set(d["attrs"])
    assert r["rgba_written"] == 0.0 and r["rgba_state"] == d  # the faint ones left out of it too
    red = SL.srgb_to_linear([0.9, 0.1, 0.1])
    np.testing.assert_allclose(r["cell_color"][:3], red, atol=1e-4)  # the cell's mean colour
    o, a = np.array(r["opacity_alpha"]).T  # Solid mode: faint shells transparent, the rest not
    assert (a[o >= SL.OPAQUE_FROM] == 1).all() and (a[o < SL.OPAQUE_FROM] < 1).all()
    assert (np.diff(a[np.argsort(o)]) >= 0).all()
    assert r["low_shell"]["instances"] == 300  # restyled: the same Gaussians, larger
    assert r["low_shell_next"]["instances"] == 400  # opacity 0.01 now clears the threshold
    assert r["points"]["points"] == 400 and r["points"]["instances"] == 0
    assert r["ellipsoids"]["instances"] == 400 and r["ellipsoids"]["splat"] is False
    assert r["ellipsoids_opaque"] is True and r["splats_transparent"] > 100
    assert r["import_sh3"] == ["FINISHED"] and r["sh3_n"] == 50  # the file stays whole
    assert r["sh3_state"]["instances"] == 40
    assert "no spherical-harmonics degree" in r["errors"]["bad_sh"]
    assert "compressed" in r["errors"]["packed"]
    assert r["hidden_before"] is True and r["show_colors"] == ["FINISHED"]
    assert r["color_type"] == "MATERIAL"
    assert r["bounces_short"] is True and r["bounces"] == 64
    assert r["render_hooks"] == 1  # registered with the add-on
    # Workbench renders draw Solid mode's shells; Cycles and EEVEE the splats' own
    assert r["final_shells"] == {"BLENDER_WORKBENCH": 0.0, "CYCLES": 1.0, "BLENDER_EEVEE": 1.0}
    np.testing.assert_allclose(r["pixel_angle"], [r["pixel_angle_expected"]] * 2, rtol=1e-6)


# PSNR (dB) measured on this synthetic set (bench.preview_fidelity.synthetic_gaussians) at 96 px,
# 2 cameras, Workbench Flat | Cycles 8 samples: the look before the splats (an opaque 2-sigma
# ellipsoid per Gaussian, grey in Solid mode) 6.4 | 4.7; the splat look with the viewport's shells
# in the final render 19.3 | 23.7; with the final render's own shells (widened by the pixel blur,
# enclosing the k-sigma sphere) 19.3 | 24.9 (the demo's 16k Gaussians: see the README); with
# faint Gaussians' shells transparent in Solid mode 22.3 | 24.9. The floors fail on each earlier
# look and on a clear regression.
WORKBENCH_FLOOR, CYCLES_FLOOR = 21.0, 24.0


@needs_bpy
def test_blender_picture_matches_the_projects_render(tmp_path):
    pytest.importorskip("torch")
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import preview_fidelity as pf
    finally:
        sys.path.remove(str(ROOT / "bench"))
    from stabledreamer.gaussians import activated

    raw = pf.synthetic_gaussians()
    npz = tmp_path / "g.npz"
    np.savez(npz, **{k: v.numpy() for k, v in activated(raw).items()})
    cams, ref_rgb, ref_alpha = pf.reference(raw, 96)
    cams = cams[:2]
    args = SimpleNamespace(
        size=96,
        modes=["workbench_flat", "cycles"],
        shell_alpha=None,
        cycles_samples=8,
        transparent_bounces=64,
        cycles_filter=0.01,
    )
    got = pf.blender_pictures(ROOT, npz, cams, args, "SPLATS", tmp_path, "splats")
    scores = {}
    for mode in args.modes:
        rgb, alpha = pf.over_background(got["images"][mode])
        scores[mode] = np.mean(
            [pf.psnr_union(ref_rgb[i], ref_alpha[i], rgb[i], alpha[i]) for i in range(len(cams))]
        )
    assert scores["workbench_flat"] >= WORKBENCH_FLOOR, scores
    assert scores["cycles"] >= CYCLES_FLOOR, scores
