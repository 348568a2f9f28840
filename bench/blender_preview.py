"""Benchmark the Blender preview object: milliseconds per stream update (goal <= 20 ms at 100k).

Each update decodes a ``gs34`` preview (``stabledreamer_protocol.preview.unpack``), writes the
attributes with ``foreach_set`` (``blender_addon/preview.py``) and re-evaluates the depsgraph (the
geometry-nodes instancing), as a viewport redraw would. Cases: same count (the usual stream
update), a changing count (densification: the mesh is rebuilt in place), and plain points above
the cap, and the add-on's whole path from the wire (the codec checks and decodes a ``preview``
message, then the same write). bpy runs as a module, so no viewport drawing is timed.
Looks (``blender_addon/splat_look.py``): splats (the default: opacity-aware extents, palette
and splat shader), opaque ellipsoids, fast points. ``--addon DIR`` times another checkout's add-on
(e.g. the main branch, for before/after rows from one machine state).
``--interleave DIR`` times this checkout's add-on and DIR's in one process instead, alternating
rounds of 10 updates (the same frames, a fresh file each round) so that both see the same load:
on a shared machine separate runs swing by more than the difference between two add-ons.
Run: ``python bench/blender_preview.py [--n 100000] [--repeats 20] [--addon DIR]
[--interleave DIR]``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ADDON_ROOT = Path(sys.argv[sys.argv.index("--addon") + 1]) if "--addon" in sys.argv else ROOT
sys.path.insert(0, str(ADDON_ROOT))
_tmp = tempfile.mkdtemp(prefix="sd-bench-blender-")
os.environ.setdefault("BLENDER_USER_RESOURCES", os.path.join(_tmp, "blender"))
os.environ.setdefault("XDG_CACHE_HOME", os.path.join(_tmp, "xdg"))

import inspect  # noqa: E402

import bpy  # noqa: E402
import numpy as np  # noqa: E402

from blender_addon import preview  # noqa: E402
from stabledreamer_protocol import preview as wire  # noqa: E402


def _frames(n: int, k: int, vary: bool) -> list[tuple[np.ndarray, np.ndarray]]:
    out = []
    for i in range(k):
        m = n - (i % 2) * (n // 100) if vary else n
        g = preview.demo_gaussians(m, seed=i)
        out.append(wire.pack(g["means"], np.log(g["scales"]), g["quats"], g["rgb"], g["opacities"]))
    return out


HAS_LOOK = "look" in inspect.signature(preview.update_preview).parameters


def _look(look: str | None) -> dict:
    return {"look": look} if HAS_LOOK and look else {}


def _decode_and_write(addon, codec, pos, attrs, **kw) -> None:
    """What the add-on does with a preview: decode it as its session does (``codec``: that
    checkout's ``stabledreamer_protocol.preview``) and write it as its runtime does."""
    if hasattr(addon, "update_from_gaussians"):
        addon.update_from_gaussians(codec.unpack(pos, attrs, log_scales=False), **kw)
    else:  # add-ons before it: everything decoded, written from the separate arrays
        g = codec.unpack(pos, attrs)
        addon.update_preview(g["means"], g["scales"], g["quats"], g["rgb"], g["opacities"], **kw)


def _time(frames, point_cap: int, look: str | None = None) -> tuple[float, float, float]:
    dg = bpy.context.evaluated_depsgraph_get()
    write, evaluate = [], []
    for pos, attrs in frames:
        t0 = time.perf_counter()
        _decode_and_write(preview, wire, pos, attrs, point_cap=point_cap, **_look(look))
        t1 = time.perf_counter()
        dg.update()
        t2 = time.perf_counter()
        write.append(t1 - t0)
        evaluate.append(t2 - t1)
    w, e = 1e3 * np.median(write), 1e3 * np.median(evaluate)
    return w, e, w + e


def _time_messages(n: int, k: int, point_cap: int) -> tuple[float, float, float]:
    """The add-on's whole path for one preview: the frames as zmq delivers them, checked and
    decoded by the codec (``Preview``), unpacked and written, then the depsgraph."""
    from stabledreamer_protocol import Preview, codec

    messages = []
    for i in range(k):
        g = preview.demo_gaussians(n, seed=i)
        msg = Preview.from_gaussians(
            "job", g["means"], np.log(g["scales"]), g["quats"], g["rgb"], g["opacities"], step=i
        )
        messages.append([bytes(f) for f in codec.encode(msg)])
    dg = bpy.context.evaluated_depsgraph_get()
    write, evaluate = [], []
    for frames in messages:
        t0 = time.perf_counter()
        preview.update_from_preview(codec.decode(frames, direction="event"), point_cap=point_cap)
        t1 = time.perf_counter()
        dg.update()
        write.append(t1 - t0)
        evaluate.append(time.perf_counter() - t1)
    w, e = 1e3 * np.median(write), 1e3 * np.median(evaluate)
    return w, e, w + e


def _load_addon(name: str, root: Path):
    """Another checkout's add-on as package ``name`` (its modules import each other relatively),
    with its preview codec (``stabledreamer_protocol/preview.py``, numpy only)."""
    import importlib
    import importlib.util

    path = root / "shared" / "stabledreamer_protocol" / "preview.py"
    spec = importlib.util.spec_from_file_location(name + "_codec", path)
    codec = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(codec)

    init = root / "blender_addon" / "__init__.py"
    spec = importlib.util.spec_from_file_location(
        name, init, submodule_search_locations=[str(init.parent)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return importlib.import_module(name + ".preview"), codec


def interleave(other: Path, n: int, rounds: int) -> None:
    """Default look, same count: this add-on and ``other``'s in alternating rounds."""
    addons = {"this": (preview, wire), other.name or str(other): _load_addon("other_addon", other)}
    frames = _frames(n, 10, vary=False)
    times = {name: ([], []) for name in addons}
    for r in range(rounds):
        order = list(addons.items())
        for name, (mod, codec) in order if r % 2 == 0 else order[::-1]:
            bpy.ops.wm.read_factory_settings(use_empty=True)
            dg = bpy.context.evaluated_depsgraph_get()
            for k, (pos, attrs) in enumerate(frames[:2] + frames):
                t0 = time.perf_counter()
                _decode_and_write(mod, codec, pos, attrs, point_cap=10 * n)
                t1 = time.perf_counter()
                dg.update()
                if k >= 2:  # the first two build the object and node groups
                    times[name][0].append(t1 - t0)
                    times[name][1].append(time.perf_counter() - t1)
    print(f"{n:,} Gaussians, same count, default look, {rounds} alternating rounds of 10 updates")
    print("median (ms): decode+write | depsgraph | total | total / the other's")
    totals = {name: 1e3 * (np.median(w) + np.median(e)) for name, (w, e) in times.items()}
    for name, (w, e) in times.items():
        w, e = 1e3 * np.median(w), 1e3 * np.median(e)
        other = next(t for k, t in totals.items() if k != name)
        print(f"  {name:30s} {w:7.2f} | {e:7.2f} | {w + e:7.2f} | {(w + e) / other:5.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--addon", type=Path, default=ROOT, help="checkout whose add-on to time")
    ap.add_argument("--interleave", type=Path, default=None, help="checkout to alternate with")
    args = ap.parse_args()
    n, k = args.n, args.repeats
    if args.interleave is not None:
        interleave(args.interleave.resolve(), n, max(2, k // 2))
        return
    print(f"add-on from {args.addon}" + ("" if HAS_LOOK else " (no look setting)"))
    print(f"{n:,} Gaussians, median of {k} updates (ms): decode+write | depsgraph | total")
    same = _frames(n, k, vary=False)
    _time(same[:2], point_cap=10 * n)  # warm up: build the object and node group
    cases = [
        ("same count, default look", same, 10 * n, None),
        ("changing count, default look", _frames(n, k, vary=True), 10 * n, None),
        ("same count, plain points", same, n - 1, None),
    ]
    if HAS_LOOK:
        cases.append(("same count, ellipsoids look", same, 10 * n, "ELLIPSOIDS"))
        cases.append(("same count, splats look", same, 10 * n, "SPLATS"))
    rows = [(name, *_time(frames, cap, look)) for name, frames, cap, look in cases]
    rows.append(("wire message, default look", *_time_messages(n, k, 10 * n)))
    for name, w, e, t in rows:
        flag = "ok" if t <= 20.0 else "over the 20 ms goal"
        print(f"  {name:30s} {w:7.2f} | {e:7.2f} | {t:7.2f}  {flag}")


if __name__ == "__main__":
    main()
