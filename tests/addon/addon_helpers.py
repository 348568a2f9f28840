"""Helpers of the add-on tests: build the linux-x64 extension zip once, run a script in a fresh
``bpy`` subprocess (Blender keeps global state, so every scenario gets its own process) with
BLENDER_USER_RESOURCES and XDG_CACHE_HOME in a temp folder, read back its JSON report."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

needs_bpy = pytest.mark.skipif(
    importlib.util.find_spec("bpy") is None,
    reason="needs the bpy module (bpy==5.0.1 is in requirements.lock.txt: run make setup)",
)

PRELUDE = r"""
import json, os, sys, time
import numpy as np

# Hide the repo's editable protocol install: the import must come from the bundled wheel.
sys.meta_path = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
sys.path = [p for p in sys.path if not p.rstrip("/").endswith("shared")]
for name in [m for m in sys.modules if m.startswith("stabledreamer_protocol")]:
    del sys.modules[name]

import bpy
import importlib

ADDON = "bl_ext.user_default.stabledreamer"
zip_path, result_path = sys.argv[1], sys.argv[2]
ARGS = json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}
out = {}


def install():
    res = bpy.ops.extensions.package_install_files(
        filepath=zip_path, repo="user_default", enable_on_install=True
    )
    return sorted(res)


def save():
    with open(result_path, "w") as f:
        json.dump(out, f, default=str)
"""


def build_zip(tmp: Path) -> Path:
    sys.path.insert(0, str(ROOT))
    try:
        import build_addon
    finally:
        sys.path.remove(str(ROOT))
    cache = ROOT / "build" / "wheels"  # downloads are cached: reruns are offline
    try:
        build_addon.pyzmq_wheels(cache, ["linux-x64"])
        build_addon.pure_wheels(cache)
    except SystemExit as exc:
        pytest.skip(f"wheels not downloadable (offline?): {str(exc)[:200]}")
    zips = build_addon.build(["linux-x64"], tmp / "dist", tmp / "build", wheel_cache=cache)
    assert len(zips) == 1
    return zips[0]


def run_blender(
    script: str, zip_path: Path, tmp: Path, args: dict | None = None, timeout: float = 120
) -> dict:
    tmp.mkdir(parents=True, exist_ok=True)
    path = tmp / "run.py"
    path.write_text(PRELUDE + script)
    result = tmp / "result.json"
    env = dict(os.environ)
    env["BLENDER_USER_RESOURCES"] = str(tmp / "blender")
    env["XDG_CACHE_HOME"] = str(tmp / "xdg")
    env["PYTHONPATH"] = ""
    cmd = [sys.executable, str(path), str(zip_path), str(result), json.dumps(args or {})]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp, timeout=timeout)
    assert proc.returncode == 0 and result.exists(), proc.stdout[-4000:] + proc.stderr[-4000:]
    data = json.loads(result.read_text())
    data["_stdout"] = proc.stdout[-4000:]
    return data
