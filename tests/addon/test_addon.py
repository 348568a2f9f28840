"""The Blender extension: build the linux-x64 zip, install it into bpy, exercise it.

Blender runs once, in a subprocess (``bpy`` keeps global state and the add-on registers classes),
with BLENDER_USER_RESOURCES and XDG_CACHE_HOME in a temp folder. The script installs the zip
with ``bpy.ops.extensions.package_install_files``, checks registration, the bundled protocol
wheel, the panel (drawn into a stub layout) and the preview object, and reports JSON.
"""

from __future__ import annotations

import textwrap
import zipfile
from pathlib import Path

import pytest
from addon_helpers import needs_bpy, run_blender

pytestmark = needs_bpy

SCRIPT = textwrap.dedent(
    r"""
    out["install"] = install()
    out["addons"] = sorted(bpy.context.preferences.addons.keys())
    out["panel"] = hasattr(bpy.types, "STABLEDREAMER_PT_panel")
    out["ops"] = sorted(dir(bpy.ops.stabledreamer))
    out["scene_props"] = hasattr(bpy.context.scene, "stabledreamer")
    s = bpy.context.scene.stabledreamer
    out["preset_items"] = [
        i.identifier for i in s.bl_rna.properties["preset"].enum_items
    ]
    s.prompt = "a red chair"
    s.seed = 7
    s.preset = "final"
    out["props"] = [s.prompt, s.negative, s.preset, s.seed]

    import stabledreamer_protocol
    import stabledreamer_protocol.preview as wire
    out["protocol_file"] = stabledreamer_protocol.__file__
    out["user_resources"] = os.environ["BLENDER_USER_RESOURCES"]

    # the stub operator reports honestly and cancels
    try:
        r = bpy.ops.stabledreamer.generate()
        out["generate"] = sorted(r)
    except RuntimeError as exc:  # an ERROR report raises in background mode
        out["generate"] = ["ERROR", str(exc)]

    # panel drawn into a stub layout
    mod = importlib.import_module("bl_ext.user_default.stabledreamer")
    calls = []

    class Layout:
        def __getattr__(self, name):
            def f(*a, **k):
                args = a[1:2] if name == "prop" else a[:1]
                calls.append((name, [str(x) for x in args], k.get("text")))
                return Layout()
            return f

    for name in ("panel", "advanced", "history"):
        stub = type("P", (), {"layout": Layout()})()
        getattr(mod.panel, "STABLEDREAMER_PT_" + name).draw(stub, bpy.context)
    out["draw"] = calls

    # the preview object, fed through the wire encoding like a real Preview message
    P = mod.preview
    out["torch_loaded_before_preview"] = "torch" in sys.modules
    def wire_roundtrip(g):
        pos, attrs = wire.pack(
            g["means"], np.log(g["scales"]), g["quats"], g["rgb"], g["opacities"]
        )
        return wire.unpack(pos, attrs)

    def read(mesh, name, key, comps):
        a = np.empty(len(mesh.vertices) * comps, np.float32)
        mesh.attributes[name].data.foreach_get(key, a)
        return a.reshape(len(mesh.vertices), comps) if comps > 1 else a

    def state(obj, g):
        dg = bpy.context.evaluated_depsgraph_get()
        dg.update()
        geo = obj.evaluated_get(dg).evaluated_geometry()
        inst = geo.instances_pointcloud()
        pc = geo.pointcloud
        m = obj.data
        d = {
            "object": obj.name,
            "mesh": m.name,
            "n": len(m.vertices),
            "attrs": {a.name: [a.data_type, a.domain] for a in m.attributes
                      if not a.name.startswith(".")},
            "err_pos": float(np.abs(read(m, "position", "vector", 3) - g["means"]).max()),
            "err_scale": float(np.abs(read(m, "scale", "vector", 3) - g["scales"]).max()),
            "err_rot": float(np.abs(read(m, "rot", "value", 4) - g["quats"]).max()),
            "err_rgb": float(np.abs(read(m, "color", "color", 4)[:, :3] - g["rgb"]).max()),
            "err_opacity": float(np.abs(read(m, "opacity", "value", 1) - g["opacities"]).max()),
            "instances": len(inst.points) if inst is not None else 0,
            "points": len(pc.points) if pc is not None else 0,
        }
        if inst is not None and len(inst.points):
            c = np.empty(len(inst.points) * 4, np.float32)
            inst.attributes["color"].data.foreach_get("color", c)
            d["instance_color_domain"] = inst.attributes["color"].domain
            d["err_instance_rgb"] = float(np.abs(c.reshape(-1, 4)[:, :3] - g["rgb"]).max())
        return d

    g = wire_roundtrip(P.demo_gaussians(1000, seed=1))
    obj = P.update_preview(g["means"], g["scales"], g["quats"], g["rgb"], g["opacities"])
    out["p1000"] = state(obj, g)
    g = wire_roundtrip(P.demo_gaussians(500, seed=2))
    obj = P.update_preview(
        g["means"], g["log_scales"], g["quats"], g["rgb"], g["opacities"], log_scales=True
    )
    out["p500"] = state(obj, g)
    g = P.demo_gaussians(300, seed=3)
    obj = P.update_preview(**g, point_cap=200)
    out["p300_capped"] = state(obj, g)
    shader = bpy.data.node_groups[P.SHADER_NAME]  # the splat shader every palette material uses
    out["material_attr"] = [
        (n.attribute_type, n.attribute_name) for n in shader.nodes if n.type == "ATTRIBUTE"
    ]
    # a real preview message through the codec (frames as bytes, as zmq delivers them)
    from stabledreamer_protocol import codec
    from stabledreamer_protocol.messages import Preview
    g = P.demo_gaussians(800, seed=4)
    msg = Preview.from_gaussians(
        "job1", g["means"], np.log(g["scales"]), g["quats"], g["rgb"], g["opacities"], step=5
    )
    frames = [bytes(f) for f in codec.encode(msg)]
    got = codec.decode(frames, direction="event")
    obj = P.update_from_preview(got)
    out["p800_message"] = state(obj, got.gaussians())
    out["torch_loaded"] = "torch" in sys.modules
    out["objects"] = sorted(o.name for o in bpy.data.objects if o.name.startswith("StableDreamer"))

    # the demo operator
    bpy.ops.stabledreamer.preview_demo(count=2000)
    out["demo_n"] = len(bpy.data.objects[P.OBJECT_NAME].data.vertices)

    # unregister cleanly
    bpy.ops.preferences.addon_disable(module="bl_ext.user_default.stabledreamer")
    out["panel_after_disable"] = hasattr(bpy.types, "STABLEDREAMER_PT_panel")
    save()
    """
)


@pytest.fixture(scope="module")
def built(addon_zip) -> Path:
    return addon_zip


@pytest.fixture(scope="module")
def blender(built, tmp_path_factory) -> dict:
    return run_blender(SCRIPT, built, tmp_path_factory.mktemp("blender"))


def test_zip_contents(built):
    with zipfile.ZipFile(built) as z:
        names = z.namelist()
        manifest = z.read("blender_manifest.toml").decode()
    assert "__init__.py" in names and "preview.py" in names
    wheels = [n for n in names if n.startswith("wheels/")]
    assert any("stabledreamer_protocol-" in w for w in wheels)
    assert any("cp311-cp311-manylinux" in w for w in wheels)  # Blender 4.2-5.0
    assert any("abi3-manylinux" in w for w in wheels)  # Blender 5.1+ (Python 3.13)
    assert any(w.startswith("wheels/plyfile-") and w.endswith("py3-none-any.whl") for w in wheels)
    assert not any("win" in w or "macosx" in w for w in wheels)
    assert 'id = "stabledreamer"' in manifest and 'platforms = ["linux-x64"]' in manifest
    assert "torch" not in "".join(names)


def test_installed_and_registered(blender):
    assert blender["install"] == ["FINISHED"]
    assert "bl_ext.user_default.stabledreamer" in blender["addons"]
    assert blender["panel"] and blender["scene_props"]
    assert {"generate", "cancel", "preview_demo"} <= set(blender["ops"])
    assert blender["preset_items"] == ["preview", "standard", "final"]
    assert blender["props"] == ["a red chair", "", "final", 7]
    assert blender["panel_after_disable"] is False


def test_protocol_from_bundled_wheel(blender):
    assert blender["protocol_file"].startswith(blender["user_resources"]), blender["protocol_file"]


def test_generate_without_backend_reports(blender):
    # an ERROR report raises RuntimeError when Blender runs in the background
    assert blender["generate"][0] == "ERROR"
    assert "Not connected to a backend: press Connect first" in blender["generate"][1]


def test_no_torch_in_blender(blender):
    assert blender["torch_loaded"] is False


def test_panel_draws(blender):
    texts = [c[2] for c in blender["draw"] if c[2]]
    props = [c[1][0] for c in blender["draw"] if c[0] == "prop"]
    ops = [c[1][0] if c[1] else None for c in blender["draw"] if c[0] == "operator"]
    assert props == [
        "endpoint", "prompt", "negative", "preset", "random_seed", "seed", "variations",
        "live_preview",
        "import_gaussians",
        "from_selected", "steps_geometry", "steps_detail", "overrides",
    ]  # fmt: skip
    assert "Not connected" in texts and "No runs yet" in texts
    assert any(t.startswith("Protocol ") and "missing" not in t for t in texts)
    assert ops == [
        "stabledreamer.connect", "stabledreamer.show_log", "stabledreamer.generate",
        "stabledreamer.cancel", "stabledreamer.import_gaussians", "stabledreamer.preview_demo",
    ]  # fmt: skip


def test_preview_object(blender):
    p1, p2, p3 = blender["p1000"], blender["p500"], blender["p300_capped"]
    assert p1["n"] == 1000 and p1["instances"] == 1000 and p1["points"] == 0
    assert p1["attrs"]["scale"] == ["FLOAT_VECTOR", "POINT"]
    assert p1["attrs"]["rot"] == ["QUATERNION", "POINT"]
    assert p1["attrs"]["color"] == ["FLOAT_COLOR", "POINT"]
    assert p1["attrs"]["opacity"] == ["FLOAT", "POINT"]
    for p in (p1, p2, p3):
        for k in ("err_pos", "err_scale", "err_rot", "err_rgb", "err_opacity"):
            assert p[k] < 1e-5, (k, p[k])
    assert p1["err_instance_rgb"] < 1e-5
    # updated in place: the same object and mesh
    assert p2["object"] == p1["object"] and p2["mesh"] == p1["mesh"]
    assert p2["n"] == 500 and p2["instances"] == 500
    # above the cap: plain points, no instances
    assert p3["mesh"] == p1["mesh"] and p3["n"] == 300
    assert p3["instances"] == 0 and p3["points"] == 300
    p4 = blender["p800_message"]
    assert p4["n"] == 800 and p4["instances"] == 800 and p4["mesh"] == p1["mesh"]
    assert p4["err_pos"] < 1e-6 and p4["err_rgb"] < 1e-6
    assert blender["objects"] == ["StableDreamer Preview"]
    assert ("INSTANCER", "color") in [tuple(x) for x in blender["material_attr"]]
    assert blender["demo_n"] == 2000
