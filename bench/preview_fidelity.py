"""What the artist sees: Blender's own picture of the add-on's Gaussians against the project's.

    python bench/preview_fidelity.py [PLY ...] [--modes workbench_flat workbench_studio cycles]
        [--eevee] [--size 256] [--baseline /work/main] [--out runs/preview_fidelity]
        [--set NAME=VALUE ...]

For every set of Gaussians (3DGS .ply files; default: the demo's result and the runs listed in
``DEFAULT_SETS`` that exist), the project's ``render()`` draws the reference from a few orbit
cameras; ``bench/preview_fidelity_blender.py`` loads the same Gaussians into the add-on's preview
object and renders them with Blender (bpy) from the same cameras in each mode: Workbench (what
Solid mode draws) with Flat and Studio lighting, Cycles on the CPU and, with ``--eevee`` (about
45 s per process here), EEVEE. Each picture is composited over the reference's grey background
and scored by PSNR over the union of both images' object masks (alpha above ``MASK_ALPHA``).
``--baseline DIR`` scores another checkout's add-on too (today's look, before this change);
``--set`` overrides settings of ``blender_addon/splat_look.py`` for a study (e.g. the Solid-mode
palette: ``OPAQUE_FROM=0.8 COVERAGE_LEVELS=0.05,0.15 LEVELS=5``).
The table (``table.md``) and side-by-side pictures are written to ``--out``.
"""

from __future__ import annotations

import argparse
import ast
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "backend"))

from stabledreamer.cameras import orbit_cameras  # noqa: E402
from stabledreamer.gaussians import SH_C0, activated  # noqa: E402
from stabledreamer.ply import load_ply  # noqa: E402
from stabledreamer.render.dispatch import render  # noqa: E402

DEFAULT_SETS = {
    "demo": "runs/demo/gaussians.ply",
    "text": "runs/demo-text/gaussians.ply",
    "blob": "runs/fidelity_blob/gaussians.ply",
    "blocks": "runs/fidelity_blocks/gaussians.ply",
    "rocket": "runs/text-a-rocket/gaussians.ply",
    "car": "runs/text-a-toy-car/gaussians.ply",
    "mushroom": "runs/text-a-mushroom/gaussians.ply",
}
"""Relative to the repo (or given on the command line): ``stabledreamer demo --out runs/demo``,
``make demo-text`` (the text path on the example-based prior: "a toy creature"), ``stabledreamer
reconstruct`` on ``bench/reconstruct_meshes.py``'s gradient blob and blocks, and more of the text
path: ``stabledreamer generate "a rocket" --prior catalogue --out runs/text-a-rocket`` (likewise
"a toy car", "a mushroom"). Those missing are skipped."""
VIEWS = ((30.0, 20.0), (150.0, 35.0), (270.0, 5.0))
"""(azimuth, elevation) in degrees: front-left, back-right from above, the right side."""
DISTANCE, FOV_Y = 2.5, 49.0
"""The training cameras' distance and field of view (``CameraConfig``)."""
BACKGROUND = 0.5
MASK_ALPHA = 0.5
"""A pixel is object where it is more object than background in either picture."""


def synthetic_gaussians(seed: int = 0, surface: int = 2400, faint: int = 1000, floaters: int = 200):
    """A small made-up result (raw parameters) with the statistics of the demo's: Gaussians of
    about 2 % of the object's size on a two-coloured sphere and a blue box, most of opacity
    0.15-0.5 (they reach full cover only together), faint ones (0.01-0.2) just off the surface and
    faint floaters around it; a quarter of the demo's Gaussians have opacity below 0.025."""
    g = torch.Generator().manual_seed(seed)

    def u(n, lo, hi, d=1):
        return lo + (hi - lo) * torch.rand(n, d, generator=g)

    def on_object(n):
        d = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=1)
        on_box = torch.arange(n) % 3 == 0
        sphere = d * 0.42 + torch.tensor([0.0, 0.0, 0.25])
        box = (torch.rand(n, 3, generator=g) - 0.5) * torch.tensor([0.7, 0.5, 0.35])
        side = torch.randint(0, 3, (n,), generator=g)  # push one coordinate onto a face
        half = torch.tensor([0.35, 0.25, 0.175])
        rows = torch.arange(n)
        box[rows, side] = half[side] * torch.sign(box[rows, side])
        box += torch.tensor([0.0, 0.0, -0.35])
        top = torch.where(
            d[:, 2:] > 0, torch.tensor([0.95, 0.8, 0.1]), torch.tensor([0.85, 0.15, 0.1])
        )
        rgb = torch.where(on_box[:, None], torch.tensor([0.15, 0.3, 0.85]), top)
        return torch.where(on_box[:, None], box, sphere), rgb

    m1, c1 = on_object(surface)
    m2, c2 = on_object(faint)
    m2 = m2 + torch.randn(faint, 3, generator=g) * 0.02
    m3 = torch.randn(floaters, 3, generator=g) * 0.35
    means = torch.cat([m1, m2, m3])
    rgb = torch.cat([c1, (c2 + torch.randn(faint, 3, generator=g) * 0.05).clamp(0, 1),
                     u(floaters, 0.2, 0.9, 3)])  # fmt: skip
    opac = torch.cat([u(surface, 0.15, 0.5), u(faint, 0.01, 0.2), u(floaters, 0.01, 0.1)])[:, 0]
    n = len(means)
    scales = u(n, 0.012, 0.028, 3)
    return {
        "means": means,
        "scales": scales.log(),
        "quats": torch.nn.functional.normalize(torch.randn(n, 4, generator=g), dim=1),
        "opacities": torch.logit(opac),
        "sh0": ((rgb - 0.5) / SH_C0)[:, None, :],
        "shN": torch.zeros(n, 0, 3),
    }


def psnr_union(ref_rgb, ref_alpha, img_rgb, img_alpha) -> float:
    mask = (ref_alpha > MASK_ALPHA) | (img_alpha > MASK_ALPHA)
    if not mask.any():
        return float("nan")
    err = np.mean((np.clip(ref_rgb, 0, 1)[mask] - np.clip(img_rgb, 0, 1)[mask]) ** 2)
    return float(10 * np.log10(1.0 / max(err, 1e-12)))


def reference(raw: dict, size: int):
    cams = orbit_cameras([v[0] for v in VIEWS], [v[1] for v in VIEWS], DISTANCE, FOV_Y, size, size)
    with torch.no_grad():
        out = render(raw, cams, torch.full((3,), BACKGROUND), backend="auto")
    return cams, out.rgb.numpy(), out.alpha[..., 0].numpy()


def blender_pictures(addon: Path, npz: Path, cams, args, look, tmp: Path, tag: str) -> dict:
    job = {
        "addon": str(addon),
        "gaussians": str(npz),
        "viewmats": cams.viewmats.tolist(),
        "fov_y_deg": [FOV_Y] * len(cams),
        "size": args.size,
        "modes": args.modes,
        "look": look,
        "shell_alpha": args.shell_alpha,
        "look_params": dict(getattr(args, "set", [])),
        "cycles_samples": args.cycles_samples,
        "transparent_bounces": args.transparent_bounces,
        "cycles_filter": args.cycles_filter,
        "out": str(tmp / f"{tag}.npz"),
    }
    path = tmp / f"{tag}.json"
    path.write_text(json.dumps(job))
    worker = ROOT / "bench" / "preview_fidelity_blender.py"
    proc = subprocess.run([sys.executable, str(worker), str(path)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"Blender worker failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    info = json.loads(Path(job["out"] + ".json").read_text())
    return {"images": dict(np.load(job["out"])), **info}


def over_background(rgba: np.ndarray):
    a = rgba[..., 3]
    return rgba[..., :3] * a[..., None] + BACKGROUND * (1 - a[..., None]), a


def save_strip(path: Path, rows: list[np.ndarray], labels: list[str] | None = None) -> None:
    """Rows of pictures (each [C, H, W, 3]) as one PNG: a row per look, a column per camera,
    each row's label written in its top-left corner."""
    from PIL import ImageDraw

    grid = np.concatenate([np.concatenate(list(r), axis=1) for r in rows], axis=0)
    img = Image.fromarray((np.clip(grid, 0, 1) * 255 + 0.5).astype(np.uint8))
    if labels:
        draw, h = ImageDraw.Draw(img), rows[0].shape[1]
        for i, text in enumerate(labels):
            draw.text((4, i * h + 3), text, fill=(255, 255, 255))
    img.save(path, optimize=True)


def _setting(text: str) -> tuple[str, object]:
    name, _, value = text.partition("=")
    parsed = ast.literal_eval(value)
    return name, list(parsed) if isinstance(parsed, tuple) else parsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("ply", nargs="*", help="3DGS .ply files (default: DEFAULT_SETS that exist)")
    ap.add_argument("--modes", nargs="+", default=["workbench_flat", "workbench_studio", "cycles"])
    ap.add_argument("--eevee", action="store_true", help="also EEVEE (about 45 s per process)")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument(
        "--looks",
        nargs="+",
        default=["SPLATS"],
        type=str.upper,
        help="the add-on looks to score: splats, ellipsoids, points",
    )
    ap.add_argument("--shell-alpha", type=float, default=None, help="override the add-on default")
    ap.add_argument(
        "--set",
        nargs="+",
        default=[],
        type=_setting,
        metavar="NAME=VALUE",
        help="override a splat_look setting for a study, e.g. OPAQUE_FROM=0.3 "
        "COVERAGE_LEVELS=0.03,0.06 (a Python literal)",
    )
    ap.add_argument("--cycles-samples", type=int, default=32)
    ap.add_argument(
        "--transparent-bounces",
        type=int,
        default=64,
        help="Cycles transparent bounces (Blender's default is 8)",
    )
    ap.add_argument(
        "--cycles-filter",
        type=float,
        default=0.01,
        help="Cycles pixel filter width in pixels (Blender's default is 1.5): 0.01 samples pixel "
        "centres, as render() does, so edges are not scored for anti-aliasing",
    )
    ap.add_argument("--baseline", type=Path, default=None, help="another checkout to score too")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "preview_fidelity")
    args = ap.parse_args()
    if args.eevee and "eevee" not in args.modes:
        args.modes.append("eevee")
    sets = {Path(p).parent.name or Path(p).stem: Path(p) for p in args.ply}
    if not sets:
        sets = {k: ROOT / v for k, v in DEFAULT_SETS.items() if (ROOT / v).is_file()}
        sets["synthetic"] = None  # synthetic_gaussians(): always there (the test's set)
    args.out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="sd-fidelity-"))

    candidates = [(look, ROOT, look.lower()) for look in args.looks]
    if args.baseline is not None:
        candidates.insert(0, (None, args.baseline.resolve(), "baseline"))
    lines = [
        f"PSNR (dB) of Blender's picture against `render()` over the union of the object masks, "
        f"{args.size} px, {len(VIEWS)} cameras (mean); Cycles {args.cycles_samples} samples, "
        f"{args.transparent_bounces} transparent bounces, pixel filter {args.cycles_filter} px.",
        "",
        "| Gaussians | N | add-on look | " + " | ".join(args.modes) + " |",
        "|---" * (3 + len(args.modes)) + "|",
    ]
    for name, ply in sets.items():
        raw = synthetic_gaussians() if ply is None else load_ply(ply)
        raw = {k: v.float() for k, v in raw.items()}
        act = {k: v.numpy() for k, v in activated(raw).items()}
        npz = tmp / f"{name}.npz"
        np.savez(npz, **act)
        cams, ref_rgb, ref_alpha = reference(raw, args.size)
        rows, labels = [ref_rgb], ["render() (the project's renderer)"]
        for look, addon, tag in candidates:
            t = time.perf_counter()
            got = blender_pictures(addon, npz, cams, args, look, tmp, f"{name}_{tag}")
            scores = []
            for mode in args.modes:
                rgb, alpha = over_background(got["images"][mode])
                ps = [
                    psnr_union(ref_rgb[i], ref_alpha[i], rgb[i], alpha[i])
                    for i in range(len(ref_rgb))
                ]
                scores.append(float(np.nanmean(ps)))
                rows.append(rgb)
                labels.append(f"{tag}: {mode}")
                save_strip(args.out / f"{name}_{tag}_{mode}.png", [ref_rgb, rgb])
            cells = " | ".join(f"{s:.1f}" for s in scores)
            lines.append(f"| {name} | {len(act['means']):,} | {tag} | {cells} |")
            print(lines[-1], f"({time.perf_counter() - t:.0f} s, render s {got['seconds']})")
        save_strip(args.out / f"{name}_all.png", rows, labels)
    table = "\n".join(lines) + "\n"
    (args.out / "table.md").write_text(table)
    print(table)
    print(f"pictures and table in {args.out}")


if __name__ == "__main__":
    main()
