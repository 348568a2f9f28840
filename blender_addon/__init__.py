"""StableDreamer for Blender: text to 3D Gaussians, streamed live into the viewport.

Modules, one job each:

- ``prefs.py``: the add-on preferences (backend address, keys, local backend, preview) and the
  scene settings the panel edits;
- ``session.py``: the connection to one backend and the followed jobs (the queue), without bpy;
- ``runtime.py``: the live state, the ``bpy.app.timers`` poll (callable directly) that applies
  what arrives, the load handler;
- ``operators.py`` and ``panel.py``: what the artist presses and sees;
- ``preview.py``: the preview object (Gaussians as instanced ellipsoids);
- ``splat_look.py``: how a Gaussian is drawn (its opacity-aware extent, the look preference);
- ``splat_nodes.py``: the geometry-nodes and shader groups behind that look;
- ``viewport_look.py``: the one-click viewport settings (Gaussian colours in Solid mode, Cycles
  bounces for splats);
- ``selection.py``: points from the selected mesh ("Start from Selected Mesh");
- ``result_import.py``: the finished mesh, debug image and log into Blender data;
- ``layout.py``: where a result lands (variations side by side, a refine beside its parent);
- ``gaussian_ply.py``: 3D Gaussian Splatting .ply files as Gaussian objects;
- ``history.py``: runs, kept in a file that outlives the .blend (with the model set that made
  each, so its licence can be told);
- ``models_link.py`` (no bpy), ``models_ops.py``, ``models_panel.py``: the backend's model sets,
  their licences and downloads, the hub token (the Models sub-panel);
- ``backend_process.py``: starting a local backend.

The add-on imports no torch: the heavy work happens in the backend process. This file imports
nothing of Blender at module level (the bpy-dependent modules are imported in ``register``), so
the bpy-free half (session, history, backend_process) imports anywhere, tests included.
"""

from __future__ import annotations


def _classes():
    from . import models_ops, models_panel, operators, panel, prefs

    return (
        prefs.StableDreamerPreferences,
        prefs.StableDreamerSettings,
        *operators.CLASSES,
        *panel.CLASSES,
        *models_ops.CLASSES,
        *models_panel.CLASSES,
    )


def register():
    import bpy
    from bpy.props import PointerProperty

    from . import models_ops, operators, prefs, runtime, splat_nodes

    for cls in _classes():
        bpy.utils.register_class(cls)
    bpy.types.Scene.stabledreamer = PointerProperty(type=prefs.StableDreamerSettings)
    models_ops.register_props()
    bpy.types.TOPBAR_MT_file_import.append(operators.menu_import)
    runtime.register()
    splat_nodes.register()


def unregister():
    import bpy

    from . import models_ops, operators, runtime, splat_nodes

    splat_nodes.unregister()
    runtime.unregister()
    bpy.types.TOPBAR_MT_file_import.remove(operators.menu_import)
    models_ops.unregister_props()
    del bpy.types.Scene.stabledreamer
    for cls in reversed(_classes()):
        bpy.utils.unregister_class(cls)
