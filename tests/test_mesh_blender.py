"""The GLB imports in Blender (bpy, in a subprocess) where it belongs, with UVs and a texture."""

import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import trimesh

from stabledreamer.mesh import MeshConfig, gaussians_to_mesh
from stabledreamer.mesh.synthetic import surface_gaussians

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("bpy") is None, reason="bpy (Blender as a module) is not installed"
)

CENTRE = (0.3, -0.2, 0.5)
EXTENTS = (0.5, 0.3, 0.2)  # all different: a swapped axis shows

BLENDER_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import bpy
    from mathutils import Vector

    bpy.ops.wm.read_factory_settings(use_empty=True)
    bpy.ops.import_scene.gltf(filepath=sys.argv[1])
    meshes = [o for o in bpy.context.scene.objects if o.type == "MESH"]
    obj = meshes[0]
    pts = [obj.matrix_world @ v.co for v in obj.data.vertices]
    lo = [min(p[i] for p in pts) for i in range(3)]
    hi = [max(p[i] for p in pts) for i in range(3)]
    mat = obj.data.materials[0]
    bsdf = next(n for n in mat.node_tree.nodes if n.type == "BSDF_PRINCIPLED")
    links = bsdf.inputs["Base Color"].links
    src = links[0].from_node if links else None
    image = src.image if src is not None and src.type == "TEX_IMAGE" else None
    print("RESULT" + json.dumps({
        "meshes": len(meshes),
        "lo": lo,
        "hi": hi,
        "uv_layers": len(obj.data.uv_layers),
        "image_size": list(image.size) if image is not None else None,
        "faces": len(obj.data.polygons),
    }))
    """
)


def test_blender_imports_glb_in_our_frame(tmp_path):
    box = trimesh.creation.box(extents=EXTENTS)
    box.apply_translation(CENTRE)
    g = surface_gaussians(box, 6000, spacing_factor=0.9)
    cfg = MeshConfig(faces=1500, texture_size=128, grid=64, views=8, view_resolution=64)
    mesh = gaussians_to_mesh(g, cfg)
    path = tmp_path / "box.glb"
    mesh.save(path)
    script = tmp_path / "import_glb.py"
    script.write_text(BLENDER_SCRIPT)
    env = dict(os.environ)
    env["BLENDER_USER_RESOURCES"] = str(tmp_path / "blender")
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")
    r = subprocess.run(
        [sys.executable, str(script), str(path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    line = next(s for s in r.stdout.splitlines() if s.startswith("RESULT"))
    out = json.loads(line[len("RESULT") :])
    assert out["meshes"] == 1 and out["faces"] == len(mesh.faces)
    assert out["uv_layers"] == 1
    assert out["image_size"] == [128, 128]
    lo, hi = np.array(out["lo"]), np.array(out["hi"])
    np.testing.assert_allclose(0.5 * (lo + hi), CENTRE, atol=0.02)  # Z-up, front -Y: our frame
    np.testing.assert_allclose(hi - lo, EXTENTS, atol=0.1)  # the surface sits a little out
    assert np.all(np.diff(hi - lo) < 0)  # x longest, z shortest: no axis swapped
