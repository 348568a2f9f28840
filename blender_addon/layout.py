"""Where a result lands among the others: variations of one prompt side by side in one
collection, a refined or continued run beside its parent, by their bounding boxes (never on top
of each other). Results carry their job id as a custom property, so they are found again after
a rename, an undo or in a saved file."""

from __future__ import annotations

import bpy
from mathutils import Vector

from .result_import import COLLECTION_PREFIX, object_name

JOB_PROPERTY = "stabledreamer_job"
"""Custom property of every imported result object: its job id."""
GROUP_PROPERTY = "stabledreamer_group"
"""Custom property of a variations collection: the group id its jobs share."""
GAP = 0.25
"""Space between neighbours, as a fraction of the new result's width."""


def related_jobs(entry, history) -> set[str]:
    """The jobs whose results ``entry``'s result goes beside: the rest of its variation group;
    for a refine or continue its parent and the parent's other follow-ups."""
    jobs = set()
    for e in history.entries:
        if e.job == entry.job:
            continue
        if entry.group and e.group == entry.group:
            jobs.add(e.job)
        elif entry.parent and entry.parent in (e.job, e.parent):
            jobs.add(e.job)
    return jobs


def neighbours(entry, history, scene=None) -> list[bpy.types.Object]:
    """The related results already in the scene (before ``entry``'s is imported)."""
    scene = scene or bpy.context.scene
    jobs = related_jobs(entry, history)
    if not jobs:
        return []
    return [o for o in scene.objects if o.get(JOB_PROPERTY) in jobs]


def job_of(obj: bpy.types.Object | None) -> str:
    """The job an imported result (or anything parented under one) came from, else ""."""
    while obj is not None:
        job = obj.get(JOB_PROPERTY)
        if job:
            return str(job)
        obj = obj.parent
    return ""


def group_collection(entry, history, scene=None) -> bpy.types.Collection:
    """The collection of ``entry``'s variation group (made on the first result)."""
    scene = scene or bpy.context.scene
    for coll in bpy.data.collections:
        if coll.get(GROUP_PROPERTY) == entry.group:
            if scene.collection.children.get(coll.name) is None and coll.users == 0:
                scene.collection.children.link(coll)
            return coll
    size = sum(1 for e in history.entries if e.group == entry.group)
    coll = bpy.data.collections.new(
        f"{COLLECTION_PREFIX}: {object_name(entry.prompt)} ({size} variations)"
    )
    coll[GROUP_PROPERTY] = entry.group
    scene.collection.children.link(coll)
    return coll


def root_of(obj: bpy.types.Object) -> bpy.types.Object:
    while obj.parent is not None:
        obj = obj.parent
    return obj


def world_bounds(objects) -> tuple[Vector, Vector] | None:
    """Axis-aligned bounds of the objects' bounding boxes in world space (None: no objects)."""
    corners = [o.matrix_world @ Vector(c) for o in objects for c in o.bound_box]
    if not corners:
        return None
    lo = Vector(min(c[i] for c in corners) for i in range(3))
    hi = Vector(max(c[i] for c in corners) for i in range(3))
    return lo, hi


def beside(moved: list[bpy.types.Object], main: bpy.types.Object, others) -> float:
    """Shift ``moved`` (the new result's top objects) along +X until ``main`` clears
    ``others`` by a gap; returns the shift."""
    if not others:
        return 0.0
    bpy.context.view_layer.update()  # matrix_world of the just-moved objects
    theirs, mine = world_bounds(others), world_bounds([main])
    if theirs is None or mine is None:
        return 0.0
    width = mine[1].x - mine[0].x
    dx = theirs[1].x + GAP * max(width, 0.1) - mine[0].x
    for o in moved:
        o.location.x += dx
    bpy.context.view_layer.update()
    return dx
