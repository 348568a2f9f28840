"""Build the StableDreamer Blender extension zip(s), one per platform, with bundled wheels.

Steps: copy ``blender_addon/`` into ``build/addon/``; build the protocol wheel from ``shared/``
(``pip wheel --no-deps``); download pyzmq wheels for Blender's Pythons (3.11 for Blender 4.2-5.0,
3.13 for 5.1+) and every platform, and plyfile's pure-Python wheel, cached in ``build/wheels/``
so reruns are offline and fast;
write the wheel list and platforms into the staged manifest; run Blender's own extension tool
(shipped inside the ``bpy`` package, no Blender binary needed): ``build --split-platforms`` into
``dist/``, then ``validate`` every zip.

    python build_addon.py                       # all platforms
    python build_addon.py --platforms linux-x64 # just one (what the tests do)
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
SOURCE = ROOT / "blender_addon"
SHARED = ROOT / "shared"
PYZMQ_VERSION = "27.3.0"
PURE_WHEELS = ("plyfile",)
"""Pure-Python packages the add-on bundles (one py3-none-any wheel serves every platform), at
the version pinned in requirements.lock.txt: plyfile reads 3D Gaussian Splatting .ply files."""
PYTHON_VERSIONS = ("3.11", "3.13")
PLATFORMS = {
    # Blender platform -> pip --platform tag
    "linux-x64": "manylinux_2_28_x86_64",
    "linux-arm64": "manylinux_2_28_aarch64",
    "windows-x64": "win_amd64",
    "windows-arm64": "win_arm64",
    "macos-arm64": "macosx_11_0_arm64",
    "macos-x64": "macosx_10_15_x86_64",
}
WHEEL_MATCH = {
    # Blender platform -> (wheel platform tag prefix, accepted architecture suffixes)
    "linux-x64": ("manylinux", ("x86_64",)),
    "linux-arm64": ("manylinux", ("aarch64",)),
    "windows-x64": ("win", ("amd64",)),
    "windows-arm64": ("win", ("arm64",)),
    "macos-arm64": ("macosx", ("arm64", "universal2")),
    "macos-x64": ("macosx", ("x86_64", "universal2")),
}
DEFAULT_PLATFORMS = ("linux-x64", "windows-x64", "macos-arm64")
IGNORE_NAMES = ("__pycache__", "*.pyc", ".DS_Store", "*.egg-info")
IGNORE = shutil.ignore_patterns(*IGNORE_NAMES)


def blender_ext_tool() -> Path:
    """``blender_ext.py`` inside the installed bpy package (found without importing bpy)."""
    spec = importlib.util.find_spec("bpy")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("bpy is not installed (pip install bpy): it carries the extension tool")
    for base in spec.submodule_search_locations:
        found = sorted(Path(base).glob("*/scripts/addons_core/bl_pkg/cli/blender_ext.py"))
        if found:
            return found[-1]
    raise SystemExit("blender_ext.py not found inside the bpy package")


def _run(cmd: list[str], quiet: bool = False) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(
            f"command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stdout}\n{proc.stderr}"
        )
    if not quiet and proc.stdout.strip():
        print(proc.stdout.strip())
    return proc.stdout


def protocol_wheel(out: Path) -> Path:
    """Build the protocol wheel from a copy of shared/ (so the build leaves shared/ untouched)."""
    src = out.parent / "protocol_src"
    shutil.rmtree(src, ignore_errors=True)
    shutil.copytree(SHARED, src, ignore=shutil.ignore_patterns(*IGNORE_NAMES, "build"))
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("stabledreamer_protocol-*.whl"):
        old.unlink()
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(out),
            str(src),
        ],
        quiet=True,
    )
    wheels = sorted(out.glob("stabledreamer_protocol-*.whl"))
    if len(wheels) != 1:
        raise SystemExit(f"expected one protocol wheel in {out}, found {wheels}")
    return wheels[0]


def _cached(cache: Path, py: str, platform: str) -> list[Path]:
    """Cached pyzmq wheels for one Python and one Blender platform."""
    abi = "cp311-cp311" if py == "3.11" else "cp312-abi3"  # pyzmq ships abi3 wheels for 3.12+
    prefix, arches = WHEEL_MATCH[platform]
    hits = []
    for w in sorted(cache.glob(f"pyzmq-{PYZMQ_VERSION}-{abi}-*.whl")):
        tags = w.name[: -len(".whl")].split("-")[-1].split(".")
        if any(t.startswith(prefix) and t.endswith(arches) for t in tags):
            hits.append(w)
    return hits


def pyzmq_wheels(cache: Path, platforms: list[str]) -> list[Path]:
    cache.mkdir(parents=True, exist_ok=True)
    wheels: list[Path] = []
    for platform in platforms:
        for py in PYTHON_VERSIONS:
            hits = _cached(cache, py, platform)
            if not hits:
                _run(
                    [
                        sys.executable,
                        "-m",
                        "pip",
                        "download",
                        f"pyzmq=={PYZMQ_VERSION}",
                        "--only-binary=:all:",
                        "--no-deps",
                        "-q",
                        "--python-version",
                        py,
                        "--platform",
                        PLATFORMS[platform],
                        "-d",
                        str(cache),
                    ],
                    quiet=True,
                )
                hits = _cached(cache, py, platform)
            if not hits:
                raise SystemExit(f"no pyzmq {PYZMQ_VERSION} wheel for Python {py} on {platform}")
            wheels.extend(h for h in hits if h not in wheels)
    return wheels


def locked_version(package: str) -> str:
    """The version ``requirements.lock.txt`` pins for ``package``."""
    lock = (ROOT / "requirements.lock.txt").read_text()
    m = re.search(rf"(?im)^{re.escape(package)}==([^\s;#]+)", lock)
    if m is None:
        raise SystemExit(f"requirements.lock.txt pins no version of {package}")
    return m.group(1)


def pure_wheels(cache: Path) -> list[Path]:
    """The pure-Python wheels of PURE_WHEELS (downloaded once, then cached)."""
    cache.mkdir(parents=True, exist_ok=True)
    wheels = []
    for package in PURE_WHEELS:
        version = locked_version(package)
        pattern = f"{package}-{version}-py3-none-any.whl"
        if not (cache / pattern).is_file():
            _run(
                [
                    sys.executable, "-m", "pip", "download", f"{package}=={version}",
                    "--only-binary=:all:", "--no-deps", "-q", "-d", str(cache),
                ],
                quiet=True,
            )  # fmt: skip
        if not (cache / pattern).is_file():
            raise SystemExit(f"no wheel {pattern} (pip download failed)")
        wheels.append(cache / pattern)
    return wheels


def write_manifest(src: Path, dst: Path, wheels: list[str], platforms: list[str]) -> None:
    text = src.read_text()
    listed = ",\n".join(f'  "./wheels/{w}"' for w in wheels)
    text, n = re.subn(r"(?m)^wheels\s*=\s*\[[^\]]*\]", f"wheels = [\n{listed},\n]", text)
    if n != 1:
        raise SystemExit("blender_manifest.toml needs one top-level `wheels = [...]` line")
    plats = ", ".join(f'"{p}"' for p in platforms)
    text, n = re.subn(r"(?m)^platforms\s*=\s*\[[^\]]*\]", f"platforms = [{plats}]", text)
    if n != 1:
        raise SystemExit("blender_manifest.toml needs one top-level `platforms = [...]` line")
    dst.write_text(text)


def build(
    platforms: list[str], out_dir: Path, build_dir: Path, wheel_cache: Path | None = None
) -> list[Path]:
    """Build, validate and return one zip per platform (``wheel_cache``: build_dir/wheels)."""
    unknown = [p for p in platforms if p not in PLATFORMS]
    if unknown:
        raise SystemExit(f"unknown platform(s) {unknown}; known: {sorted(PLATFORMS)}")
    stage = build_dir / "addon"
    shutil.rmtree(stage, ignore_errors=True)
    shutil.copytree(SOURCE, stage, ignore=IGNORE)
    wheel_dir = stage / "wheels"
    wheel_dir.mkdir()
    proto = protocol_wheel(build_dir / "protocol")
    zmq = pyzmq_wheels(wheel_cache or build_dir / "wheels", platforms)
    pure = pure_wheels(wheel_cache or build_dir / "wheels")
    for w in [proto, *zmq, *pure]:
        shutil.copy2(w, wheel_dir / w.name)
    names = sorted(w.name for w in [proto, *zmq, *pure])
    write_manifest(
        SOURCE / "blender_manifest.toml", stage / "blender_manifest.toml", names, platforms
    )

    out_dir.mkdir(parents=True, exist_ok=True)
    tool = blender_ext_tool()
    before = {p: p.stat().st_mtime for p in out_dir.glob("*.zip")}
    _run(
        [
            sys.executable,
            str(tool),
            "build",
            "--split-platforms",
            "--source-dir",
            str(stage),
            "--output-dir",
            str(out_dir),
        ],
        quiet=True,
    )
    zips = sorted(
        p for p in out_dir.glob("stabledreamer-*.zip") if before.get(p) != p.stat().st_mtime
    )
    if len(zips) != len(platforms):
        raise SystemExit(f"expected {len(platforms)} zip(s), got {[z.name for z in zips]}")
    for z in zips:
        _run([sys.executable, str(tool), "validate", str(z)], quiet=True)
    return zips


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--platforms",
        default=",".join(DEFAULT_PLATFORMS),
        help=f"comma-separated Blender platforms (known: {', '.join(PLATFORMS)})",
    )
    ap.add_argument("--output-dir", type=Path, default=ROOT / "dist")
    ap.add_argument("--build-dir", type=Path, default=ROOT / "build")
    ap.add_argument(
        "--wheel-cache",
        type=Path,
        default=None,
        help="where downloaded pyzmq wheels are kept (default: BUILD_DIR/wheels)",
    )
    args = ap.parse_args(argv)
    platforms = [p.strip() for p in args.platforms.split(",") if p.strip()]
    for z in build(platforms, args.output_dir, args.build_dir, args.wheel_cache):
        print(f"{z}  ({z.stat().st_size / 1e6:.1f} MB, validated)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
