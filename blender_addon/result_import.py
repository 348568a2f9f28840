"""The finished job in the scene: the GLB through Blender's glTF importer, in its own collection,
named after the prompt, at the 3D cursor (or where the blockout was); plus the debug image and
the backend log as Blender data-blocks."""

from __future__ import annotations

import re
from pathlib import Path

import bpy
import numpy as np

COLLECTION_PREFIX = "StableDreamer"
DEBUG_IMAGE = "StableDreamer Debug"
LOG_TEXT = "StableDreamer Log"


def object_name(prompt: str) -> str:
    """A readable object name from the prompt ("a ceramic teapot" -> "ceramic teapot")."""
    words = re.sub(r"[^\w\s-]", " ", prompt).split()
    if words and words[0].lower() in ("a", "an", "the"):
        words = words[1:]
    return (" ".join(words)[:48].strip() or "generated").capitalize()


def write_files(folder: Path, files: dict[str, bytes]) -> Path:
    """Save the downloaded result files (atomically each: a crash leaves no half file)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        if Path(name).name != name or name.startswith("."):
            continue  # the protocol allows plain names only; never write outside the folder
        tmp = folder / f".{name}.tmp"
        tmp.write_bytes(data)
        tmp.replace(folder / name)
    return folder


def import_mesh(
    glb: Path,
    name: str,
    location=(0.0, 0.0, 0.0),
    scale: float = 1.0,
    scene: bpy.types.Scene | None = None,
    collection: bpy.types.Collection | None = None,
) -> bpy.types.Object:
    """Import ``glb`` into a new collection ``StableDreamer: <name>`` (or into ``collection``,
    linked to the scene) and return its mesh object (renamed ``name``), moved to ``location``
    and scaled by ``scale``."""
    if not glb.is_file():
        raise FileNotFoundError(f"{glb} is missing: the result has no mesh to import.")
    scene = scene or bpy.context.scene
    shared = collection is not None
    coll = collection or bpy.data.collections.new(f"{COLLECTION_PREFIX}: {name}")
    if not shared:
        scene.collection.children.link(coll)
    before = set(bpy.data.objects)
    layer = bpy.context.view_layer
    previous = layer.active_layer_collection
    # The importer selects what it makes: keep the artist's selection as it was.
    selected = [o.name for o in layer.objects if o.select_get(view_layer=layer)]
    active = layer.objects.active.name if layer.objects.active is not None else None
    layer.active_layer_collection = _layer_collection(layer.layer_collection, coll)
    result: set = set()
    try:
        result = bpy.ops.import_scene.gltf(filepath=str(glb))
    except RuntimeError:
        pass  # reported below, the same as a cancelled import
    finally:
        layer.active_layer_collection = previous
        _restore_selection(layer, selected, active)
    new = [o for o in bpy.data.objects if o not in before]
    if "FINISHED" not in result or not new:
        for o in new:
            bpy.data.objects.remove(o)
        if not shared:
            bpy.data.collections.remove(coll)
        raise RuntimeError(f"Blender's glTF importer could not read {glb}.")
    for o in new:  # the importer links to the active collection; make sure they are in ours
        if coll not in o.users_collection:
            coll.objects.link(o)
        for other in list(o.users_collection):
            if other is not coll:
                other.objects.unlink(o)
    roots = [o for o in new if o.parent is None]
    meshes = [o for o in new if o.type == "MESH"]
    main = meshes[0] if meshes else new[0]
    main.name = name
    if main.data is not None:
        main.data.name = name
    for o in roots:
        o.location = tuple(np.asarray(o.location) * scale + np.asarray(location))
        o.scale = tuple(np.asarray(o.scale) * scale)
    return main


def _restore_selection(layer, selected: list[str], active: str | None) -> None:
    for o in layer.objects:
        o.select_set(o.name in selected, view_layer=layer)
    layer.objects.active = layer.objects.get(active) if active else None


def _layer_collection(root, coll):
    if root.collection == coll:
        return root
    for child in root.children:
        found = _layer_collection(child, coll)
        if found is not None:
            return found
    return None


def show_debug_image(image: np.ndarray) -> bpy.types.Image:
    """Write an uint8 [H, W, 3|4] image (row 0 at the top) into the debug image data-block."""
    h, w = image.shape[:2]
    img = bpy.data.images.get(DEBUG_IMAGE)
    if img is None or tuple(img.size) != (w, h):
        if img is not None:
            bpy.data.images.remove(img)
        img = bpy.data.images.new(DEBUG_IMAGE, width=w, height=h, alpha=False)
    rgba = np.ones((h, w, 4), np.float32)
    rgba[..., : image.shape[2]] = image[..., :4].astype(np.float32) / 255.0
    img.pixels.foreach_set(np.ascontiguousarray(rgba[::-1]).ravel())  # Blender: bottom row first
    img.update()
    return img


_PREVIEWS = None
TILE_SIDE = 256
"""Largest side of a debug tile drawn in the panel (the full strip stays in the image)."""


def debug_tiles(image: np.ndarray, labels: list[str]) -> list[tuple[str, int]]:
    """Split the strip into its ``labels`` tiles (render | noisy | x0) as panel icons drawn
    straight from their pixels (``bpy.utils.previews``): ``[(label, icon_id), ...]``."""
    global _PREVIEWS
    import bpy.utils.previews

    if _PREVIEWS is None:
        _PREVIEWS = bpy.utils.previews.new()
    h, w = image.shape[:2]
    n = len(labels) if labels and w % len(labels) == 0 else 1
    tw = w // n
    step = max(1, -(-max(h, tw) // TILE_SIDE))
    out = []
    for i in range(n):
        tile = image[::step, i * tw : (i + 1) * tw : step]
        th, tww = tile.shape[:2]
        rgba = np.ones((th, tww, 4), np.float32)
        rgba[..., :3] = tile[..., :3].astype(np.float32) / 255.0
        key = f"debug{i}"
        pv = _PREVIEWS.get(key) or _PREVIEWS.new(key)
        pv.image_size = (tww, th)
        pv.image_pixels_float.foreach_set(np.ascontiguousarray(rgba[::-1]).ravel())
        out.append((labels[i] if n == len(labels) else "debug", pv.icon_id))
    return out


def free_previews() -> None:
    global _PREVIEWS
    if _PREVIEWS is not None:
        import bpy.utils.previews

        bpy.utils.previews.remove(_PREVIEWS)
        _PREVIEWS = None


def show_log(lines: list[str]) -> bpy.types.Text:
    """Put the backend's recent log lines into a text data-block (read it in the Text Editor)."""
    text = bpy.data.texts.get(LOG_TEXT) or bpy.data.texts.new(LOG_TEXT)
    text.clear()
    text.write("\n".join(lines) + "\n")
    return text
