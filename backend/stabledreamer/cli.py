"""The ``stabledreamer`` command line."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--steps", type=int, help="training steps (of the last stage)")
    p.add_argument("--resolution", type=int, help="training render size in pixels (square)")
    p.add_argument("--seed", type=int, help="random seed (default 0)")
    p.add_argument(
        "--preset", default="reconstruct", help="named configuration (default %(default)s)"
    )
    p.add_argument(
        "--oracle-mode",
        choices=["perfect", "imperfect"],
        help="imperfect: x0 estimate blurred/perturbed more at high noise, like a real denoiser",
    )
    p.add_argument(
        "--schedule",
        choices=["constant", "step", "linear", "sqrt"],
        help="t_max annealing schedule",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    p.add_argument(
        "--resume", action="store_true", help="continue the run in --out from its last checkpoint"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stabledreamer",
        description="StableDreamer text-to-3D backend (3D Gaussians + score distillation).",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    rec = sub.add_parser(
        "reconstruct",
        help="fit Gaussians to a coloured mesh through the "
        "oracle guidance (same SDS path as text-to-3D)",
    )
    rec.add_argument(
        "target",
        nargs="?",
        help=".glb/.gltf/.obj/.ply mesh with vertex colours "
        "or a texture (not needed with --resume)",
    )
    rec.add_argument("--out", required=True, help="run folder to write")
    _add_run_options(rec)

    demo = sub.add_parser(
        "demo",
        help="reconstruct the built-in procedural object: the offline "
        "main job (.ply, metrics, pictures)",
    )
    demo.add_argument("--out", default="runs/demo", help="run folder (default %(default)s)")
    _add_run_options(demo)
    return parser


def _config_from_args(args):
    from .presets import get_preset
    from .reconstruct import PROCEDURAL_DEMO

    cfg = get_preset(args.preset)
    if args.command == "demo":
        cfg.target = PROCEDURAL_DEMO
    else:
        if not args.target:
            raise ValueError("give the target mesh: stabledreamer reconstruct MESH --out DIR")
        path = Path(args.target)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such file; give a .glb/.gltf/.obj/.ply mesh")
        cfg.target = str(path.resolve())
    last = cfg.stages[-1]
    if args.steps is not None:
        if args.steps <= 0:
            raise ValueError(f"--steps must be a positive number, got {args.steps}")
        last.steps = args.steps
    if args.resolution is not None:
        if args.resolution < 8:
            raise ValueError(f"--resolution must be at least 8, got {args.resolution}")
        last.resolution = args.resolution
        cfg.eval_resolution = args.resolution
    if args.seed is not None:
        cfg.seed = args.seed
    if args.oracle_mode:
        cfg.oracle.mode = args.oracle_mode
    if args.schedule:
        for st in cfg.stages:
            st.noise.schedule = args.schedule
    cfg.validate()
    return cfg


def _progress_printer(quiet: bool):
    if quiet:
        return None, None
    from tqdm import tqdm

    bar = tqdm(total=None, unit="step", dynamic_ncols=True, file=sys.stderr)

    def callback(p) -> None:
        if bar.total != p.total_steps:
            bar.reset(total=p.total_steps)
            bar.update(p.global_step - 1)
        bar.set_description(f"{p.stage} [{p.stage_index + 1}/{p.stage_count}]", refresh=False)
        bar.set_postfix(
            loss=f"{p.losses['total']:.4g}",
            gaussians=p.gaussians,
            eta=f"{p.eta_s:.0f}s",
            refresh=False,
        )
        bar.update(1)

    return callback, bar


def cmd_reconstruct(args) -> int:
    from .reconstruct import run_reconstruction

    out = Path(args.out)
    cfg = None if args.resume else _config_from_args(args)
    if args.resume:
        from .reconstruct import load_run_config

        if not (out / "config.json").is_file():
            raise ValueError(f"{out}: not a run folder (no config.json); nothing to resume")
        cfg = load_run_config(out)
    callback, bar = _progress_printer(args.quiet)
    try:
        metrics = run_reconstruction(
            cfg, out, overwrite=args.overwrite, resume=args.resume, callback=callback
        )
    finally:
        if bar is not None:
            bar.close()
    print(
        f"psnr_heldout {metrics['psnr_heldout']:.2f} dB, {metrics['gaussians']} Gaussians, "
        f"{metrics['seconds']:.0f} s"
    )
    print(f"outputs in {out}/: gaussians.ply metrics.json turntable.png heldout.png debug/")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from .trainer import TrainingCancelled, TrainingDiverged

    user_errors = (ValueError, FileNotFoundError, TrainingDiverged, TrainingCancelled)
    try:
        return {"reconstruct": cmd_reconstruct, "demo": cmd_reconstruct}[args.command](args)
    except KeyboardInterrupt:
        print(
            "stabledreamer: interrupted; the last checkpoint is kept (use --resume)",
            file=sys.stderr,
        )
        return 130
    except user_errors as e:
        print(f"stabledreamer: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
