"""StableDreamer for Blender: text to 3D Gaussians, streamed live into the viewport.

Modules, one job each:

- ``prefs.py``: the add-on preferences (backend address, keys, local backend, preview) and the
  scene settings the panel edits;
- ``session.py``: the connection to one backend and the followed job, without bpy;
- ``runtime.py``: the live state, the ``bpy.app.timers`` poll (callable directly) that applies
  what arrives, the load handler;
- ``operators.py`` and ``panel.py``: what the artist presses and sees;
- ``preview.py``: the preview object (Gaussians as instanced ellipsoids);
- ``selection.py``: points from the selected mesh ("Start from Selected Mesh");
- ``result_import.py``: the finished mesh, debug image and log into Blender data;
- ``gaussian_ply.py``: 3D Gaussian Splatting .ply files as Gaussian objects;
- ``history.py``: runs, kept in a file that outlives the .blend;
- ``backend_process.py``: starting a local backend.

The add-on imports no torch: the heavy work happens in the backend process.
"""

from __future__ import annotations

import bpy
from bpy.props import PointerProperty

from . import operators, panel, prefs, runtime

CLASSES = (
    prefs.StableDreamerPreferences,
    prefs.StableDreamerSettings,
    *operators.CLASSES,
    *panel.CLASSES,
)


def register():
    for cls in CLASSES:
        bpy.utils.register_class(cls)
    bpy.types.Scene.stabledreamer = PointerProperty(type=prefs.StableDreamerSettings)
    bpy.types.TOPBAR_MT_file_import.append(operators.menu_import)
    runtime.register()


def unregister():
    runtime.unregister()
    bpy.types.TOPBAR_MT_file_import.remove(operators.menu_import)
    del bpy.types.Scene.stabledreamer
    for cls in reversed(CLASSES):
        bpy.utils.unregister_class(cls)
