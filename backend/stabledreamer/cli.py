"""The ``stabledreamer`` command line."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def _add_device_option(
    p: argparse.ArgumentParser,
    more: str = "; also with --resume (a run may continue on another device)",
) -> None:
    p.add_argument(
        "--device",
        help="auto (default: CUDA when present, else the CPU) | cpu | cuda | cuda:N" + more,
    )


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
        "--resume",
        nargs="?",
        const="",
        metavar="RUN_DIR",
        help="continue RUN_DIR (default: --out) from its last checkpoint",
    )
    _add_device_option(p)
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
    rec.add_argument("--out", help="run folder to write (required unless --resume RUN_DIR)")
    _add_run_options(rec)

    demo = sub.add_parser(
        "demo",
        help="reconstruct the built-in procedural object: the offline "
        "main job (.ply, metrics, pictures)",
    )
    demo.add_argument("--out", default="runs/demo", help="run folder (default %(default)s)")
    _add_run_options(demo)
    _add_generate_parser(sub)
    _add_service_parsers(sub)
    _add_mesh_parser(sub)
    _add_doctor_parser(sub)
    _add_prior_parser(sub)
    tiny = sub.add_parser(
        "tiny-models",
        help="build tiny random IF-like and SD-like pipelines into DIR/if and DIR/sd "
        "(offline tests of the real loading code; the outputs are noise)",
    )
    tiny.add_argument("dir", help="folder to write")
    tiny.add_argument("--seed", type=int, default=0, help="weights seed (default %(default)s)")
    tiny.add_argument(
        "--variant",
        choices=["fp16"],
        help="also write fp16 weight files next to the fp32 ones, as the real repositories do",
    )
    return parser


def _config_from_args(args):
    from .presets import get_preset
    from .runs.reconstruct import PROCEDURAL_DEMO

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
    """A progress bar over all stages: stage, step/total, loss, Gaussian count, ETA."""
    if quiet:
        return None, None
    from tqdm import tqdm

    bar = tqdm(total=1, unit="step", dynamic_ncols=True, file=sys.stderr, delay=0.5)

    def callback(p) -> None:
        if bar.total != p.total_steps:  # first call (also after --resume): the real total
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


def _add_generate_parser(sub) -> None:
    p = sub.add_parser(
        "generate",
        help="text to 3D: DeepFloyd IF shapes the geometry, then Stable Diffusion the colour "
        "and detail (needs a GPU for real models)",
    )
    p.add_argument("prompt", nargs="?", help='what to make, e.g. "a ceramic teapot"')
    p.add_argument("--out", help="run folder to write (required unless --resume RUN_DIR)")
    p.add_argument("--negative", default=None, help="negative prompt (both stages)")
    p.add_argument(
        "--preset",
        default=None,
        help="preview (default: small renders, the quickest) | standard | final; toy (the "
        "default with --prior)",
    )
    p.add_argument(
        "--prior",
        metavar="BANK",
        help="guide with the example-based prior instead of the diffusion models: a bank folder "
        "from `stabledreamer prior build`, or catalogue (the built-in objects); offline, CPU",
    )
    p.add_argument("--seed", type=int, help="random seed (default 0)")
    p.add_argument("--if-model", help="DeepFloyd IF stage I: hub id or local folder")
    p.add_argument("--sd-model", help="Stable Diffusion: hub id or local folder")
    p.add_argument("--steps-stage1", type=int, help="steps of the geometry stage (IF)")
    p.add_argument("--steps-stage2", type=int, help="steps of the detail stage (SD)")
    p.add_argument("--sd-resolution", type=int, help="render size for Stable Diffusion")
    p.add_argument(
        "--cpu-offload",
        action="store_true",
        help="low GPU memory: keep the model weights in CPU memory and stream them to the GPU "
        "layer by layer (slower; docs/gpu.md); also with --resume",
    )
    p.add_argument(
        "--init", default="", help="sphere (default), a point cloud / 3DGS .ply, or a mesh"
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    p.add_argument(
        "--resume", nargs="?", const="", metavar="RUN_DIR",
        help="continue RUN_DIR (default: --out) from its last checkpoint",
    )  # fmt: skip
    _add_device_option(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _run_dir_and_saved_config(args):
    """The run folder (``--resume RUN_DIR`` or ``--out``) and, when resuming, its saved config."""
    from .runs.reconstruct import load_run_config

    if args.resume:
        args.out = args.resume
    if not args.out:
        raise ValueError("give the run folder: --out DIR (or --resume RUN_DIR)")
    out = Path(args.out)
    if args.resume is None:
        return out, None
    if not (out / "config.json").is_file():
        raise ValueError(f"{out}: not a run folder (no config.json); nothing to resume")
    return out, load_run_config(out)


def cmd_generate(args) -> int:
    from .presets import TEXT_PRESETS, get_preset
    from .runs.generate import run_generation

    out, cfg = _run_dir_and_saved_config(args)
    resume = cfg is not None
    if not resume:
        preset = args.preset or ("toy" if args.prior else "preview")
        if preset not in (*TEXT_PRESETS, "toy"):
            raise ValueError(f"unknown preset {preset!r}; choose one of {TEXT_PRESETS} or toy")
        cfg = get_preset(preset)
        if args.prior:
            _use_prior(cfg, args.prior)
        cfg.prompt = args.prompt or ""
        cfg.init_from = args.init
        if args.seed is not None:
            cfg.seed = args.seed
        if args.negative is not None:
            cfg.deepfloyd_if.negative_prompt = cfg.stable_diffusion.negative_prompt = args.negative
        if args.if_model:
            cfg.deepfloyd_if.model = args.if_model
        if args.sd_model:
            cfg.stable_diffusion.model = args.sd_model
        for index, steps in ((0, args.steps_stage1), (1, args.steps_stage2)):
            if steps is not None:
                if steps <= 0:
                    raise ValueError(f"--steps-stage{index + 1} must be positive, got {steps}")
                cfg.stages[index].steps = steps
        if args.sd_resolution is not None:
            cfg.stages[1].resolution = cfg.stable_diffusion.resolution = args.sd_resolution
    callback, bar = _progress_printer(args.quiet)
    try:
        metrics = run_generation(
            cfg, out, overwrite=args.overwrite, resume=resume, callback=callback,
            device=args.device, cpu_offload=args.cpu_offload,
        )  # fmt: skip
    finally:
        if bar is not None:
            bar.close()
    print(f"{metrics['gaussians']} Gaussians, {metrics['seconds']:.0f} s; outputs in {out}/")
    if "psnr_heldout" in metrics:  # the prior's bank held the prompt's true mesh
        scores = [f"psnr_heldout {metrics['psnr_heldout']:.2f} dB"]
        if "chamfer" in metrics:
            scores.append(f"chamfer {metrics['chamfer']:.4f}")
        if "multi_face" in metrics:
            scores.append(f"multi_face {metrics['multi_face']:+.2f} dB (negative: no second face)")
        print("against the true object: " + ", ".join(scores))
    if "mesh_error" in metrics:
        print(f"mesh: not written ({metrics['mesh_error']})")
    return 0


def _use_prior(cfg, bank: str) -> None:
    from .guidance.prior_bank import CATALOGUE

    if not all(s.guidance == "example_prior" for s in cfg.stages):
        raise ValueError(f"--prior runs the toy preset, not {cfg.preset!r}: leave out --preset")
    if bank != CATALOGUE:
        if not Path(bank).is_dir():
            raise FileNotFoundError(
                f"--prior {bank}: no such folder; build one with `stabledreamer prior build "
                f"{bank} --object PROMPT=MESH`, or use --prior catalogue"
            )
        bank = str(Path(bank).resolve())
    cfg.example_prior.bank = bank


def _add_prior_parser(sub) -> None:
    from .guidance.prior_bank import BankBuildConfig

    d = BankBuildConfig()
    prior = sub.add_parser(
        "prior", help="the example-based prior: build a bank of labelled renders of known meshes"
    )
    psub = prior.add_subparsers(dest="prior_command", required=True)
    b = psub.add_parser(
        "build",
        help="render each mesh from random views over the sphere, labelled with its prompt and "
        "view, into a bank folder (bank.npz + bank.json, the meshes kept as ground truth)",
    )
    b.add_argument("out", help="bank folder to write")
    b.add_argument(
        "--object", action="append", default=[], metavar="PROMPT=MESH",
        help="an object: its prompt and a .glb/.gltf/.obj/.ply mesh with colours (repeatable)",
    )  # fmt: skip
    b.add_argument(
        "--front", action="append", default=[], metavar="PROMPT",
        help="this object has a clear front on -Y (a face, a handle): it gets a multi-face score",
    )  # fmt: skip
    b.add_argument("--catalogue", action="store_true", help="add the built-in catalogue objects")
    b.add_argument("--views", type=int, default=d.views, help="views per object (%(default)s)")
    b.add_argument(
        "--resolution", type=int, nargs="+", default=list(d.resolutions),
        help="image sizes kept, each dividing the largest (default %(default)s)",
    )  # fmt: skip
    b.add_argument(
        "--elevation", type=float, nargs=2, default=list(d.elevation_deg), metavar=("LOW", "HIGH"),
        help="draw the views between these elevations (default %(default)s: the toy preset's "
        "cameras; -90 90 is the whole sphere)",
    )  # fmt: skip
    b.add_argument("--seed", type=int, default=d.seed, help="views seed (default %(default)s)")
    b.add_argument("--overwrite", action="store_true", help="replace an existing bank folder")


def cmd_prior(args) -> int:
    from .guidance.prior_bank import (
        BankBuildConfig,
        BankObject,
        build_bank,
        catalogue_objects,
    )
    from .targets.target_mesh import load_target

    objects = catalogue_objects() if args.catalogue else []
    specs = []
    for spec in args.object:
        prompt, eq, mesh = spec.rpartition("=")
        prompt = " ".join(prompt.split())
        if not eq or not prompt or not mesh:
            raise ValueError(f'--object {spec!r}: write it as "PROMPT=MESH"')
        specs.append((prompt, mesh))
    unknown = set(" ".join(f.split()) for f in args.front) - {p for p, _ in specs}
    if unknown:
        raise ValueError(f"--front {sorted(unknown)}: not the prompt of an --object")
    fronts = {" ".join(f.split()) for f in args.front}
    for prompt, mesh in specs:
        obj = BankObject(prompt, prompt in fronts, str(Path(mesh).resolve()))
        objects.append((obj, load_target(mesh)))
    cfg = BankBuildConfig(
        views=args.views, resolutions=tuple(args.resolution), seed=args.seed,
        elevation_deg=tuple(args.elevation),
    )  # fmt: skip
    out = build_bank(objects, args.out, cfg, overwrite=args.overwrite)
    n = len(objects) * cfg.views
    print(f"{len(objects)} objects, {n} views at {list(cfg.resolutions)} px -> {out}/")
    return 0


def cmd_reconstruct(args) -> int:
    from .runs.reconstruct import run_reconstruction

    out, cfg = _run_dir_and_saved_config(args)
    resume = cfg is not None
    if not resume:
        cfg = _config_from_args(args)
    callback, bar = _progress_printer(args.quiet)
    try:
        metrics = run_reconstruction(
            cfg, out, overwrite=args.overwrite, resume=resume, callback=callback,
            device=args.device,
        )  # fmt: skip
    finally:
        if bar is not None:
            bar.close()
    print(
        f"psnr_heldout {metrics['psnr_heldout']:.2f} dB, {metrics['gaussians']} Gaussians, "
        f"{metrics['seconds']:.0f} s"
    )
    if "chamfer" in metrics:
        print(
            f"mesh: {metrics['mesh_faces']} faces, chamfer {metrics['chamfer']:.4f}, "
            f"mesh_psnr_heldout {metrics['mesh_psnr_heldout']:.2f} dB"
        )
    elif "mesh_error" in metrics:
        print(f"mesh: not written ({metrics['mesh_error']})")
    names = [
        n
        for n in ("gaussians.ply", "mesh.glb", "metrics.json", "turntable.png", "heldout.png")
        if (out / n).exists()
    ]
    print(f"outputs in {out}/: {' '.join(names)} debug/ checkpoints/")
    return 0


def _add_service_parsers(sub) -> None:
    from stabledreamer_protocol import DEFAULT_ENDPOINT

    srv = sub.add_parser(
        "serve",
        help="run the backend service: jobs over ZeroMQ for the Blender add-on (and any client)",
    )
    srv.add_argument(
        "--bind", default=DEFAULT_ENDPOINT, help="endpoint to listen on (default %(default)s)"
    )
    srv.add_argument(
        "--state",
        default="runs/service",
        help="folder for job records, checkpoints and results (default %(default)s)",
    )
    srv.add_argument(
        "--keys",
        help="CURVE key folder (default: $STABLEDREAMER_KEYS or ~/.config/stabledreamer/keys; "
        "made on first run)",
    )
    srv.add_argument(
        "--no-curve",
        action="store_true",
        help="no encryption or client keys (refused unless --bind is loopback)",
    )
    srv.add_argument("--if-model", help="DeepFloyd IF stage I weights (hub id or folder)")
    srv.add_argument("--sd-model", help="Stable Diffusion weights (hub id or folder)")
    srv.add_argument(
        "--max-queue", type=int, help="jobs queued or running at once (default: the protocol's 32)"
    )
    srv.add_argument(
        "--preview-points",
        type=int,
        default=100_000,
        help="most Gaussians per preview (default %(default)s)",
    )

    keys = sub.add_parser(
        "keys",
        help="make CURVE keys: the server keypair, a client keypair, authorised client keys",
    )
    keys.add_argument("dir", help="key folder (created owner-only)")
    keys.add_argument(
        "--client",
        action="append",
        default=[],
        metavar="NAME",
        help="also make and authorise the keypair NAME (repeatable)",
    )


def cmd_serve(args) -> int:
    import dataclasses

    from stabledreamer_protocol import DEFAULT_LIMITS

    from .server.security import SecurityError, check_bind

    try:  # before the heavy imports: a refused bind answers at once
        check_bind(args.bind, curve=not args.no_curve)
    except SecurityError as e:
        raise ValueError(str(e)) from None
    from .server.service import ServiceConfig, serve

    limits = DEFAULT_LIMITS
    if args.max_queue is not None:
        if args.max_queue <= 0:
            raise ValueError(f"--max-queue must be positive, got {args.max_queue}")
        limits = dataclasses.replace(limits, max_queue=args.max_queue)
    if not 0 <= args.preview_points <= limits.max_preview_points:
        raise ValueError(f"--preview-points must be in [0, {limits.max_preview_points}]")
    models = [f"if:{args.if_model}"] if args.if_model else []
    models += [f"sd:{args.sd_model}"] if args.sd_model else []
    cfg = ServiceConfig(
        bind=args.bind,
        state=Path(args.state),
        curve=not args.no_curve,
        keys=Path(args.keys) if args.keys else None,
        limits=limits,
        preview_points=args.preview_points,
        models=models,
    )
    import zmq

    try:
        code = serve(cfg)
    except SecurityError as e:
        raise ValueError(str(e)) from None
    except zmq.ZMQError as e:
        raise ValueError(f"cannot listen on {args.bind}: {e}") from None
    # Everything is closed and saved: skip the interpreter's slow teardown of torch.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def cmd_keys(args) -> int:
    from .server.security import make_keys

    for line in make_keys(args.dir, args.client):
        print(line)
    return 0


def _add_mesh_parser(sub) -> None:
    from .mesh.config import MeshConfig

    d = MeshConfig()
    p = sub.add_parser(
        "mesh",
        help="turn a 3DGS .ply into a textured mesh (.glb: UVs, baked base-colour texture)",
    )
    p.add_argument("gaussians", help="3D Gaussian Splatting .ply (as written by every run)")
    p.add_argument("--out", required=True, help="the .glb file to write")
    p.add_argument("--faces", type=int, default=d.faces, help="face target (default %(default)s)")
    p.add_argument(
        "--texture-size",
        type=int,
        default=d.texture_size,
        help="base-colour texture size in texels, square (default %(default)s)",
    )
    p.add_argument(
        "--grid",
        type=int,
        default=d.grid,
        help="density grid: voxels along the longest side (default %(default)s)",
    )


def cmd_mesh(args) -> int:
    from .mesh import MeshConfig, gaussians_to_mesh
    from .ply import load_ply

    out = Path(args.out)
    if out.suffix.lower() != ".glb":
        raise ValueError(f"--out must name a .glb file, got {out}")
    cfg = MeshConfig(faces=args.faces, texture_size=args.texture_size, grid=args.grid)
    cfg.validate()  # before reading the file: a bad option answers at once
    mesh = gaussians_to_mesh(load_ply(args.gaussians), cfg)
    mesh.save(out)
    steps = ", ".join(f"{k} {v:.1f}s" for k, v in mesh.timings.items())
    print(f"{len(mesh.faces)} faces, {cfg.texture_size}px texture -> {out} ({steps})")
    return 0


def _add_doctor_parser(sub) -> None:
    p = sub.add_parser(
        "doctor",
        help="check what a real run needs (GPU and its memory, gsplat's CUDA build, models, "
        "hub token, disk) and say how to fix what is missing; exit code 1 if anything FAILs",
    )
    p.add_argument("--if-model", help="DeepFloyd IF stage I: hub id or local folder")
    p.add_argument("--sd-model", help="Stable Diffusion: hub id or local folder")
    _add_device_option(p, "; cpu: check for a CPU run (tiny models), a missing GPU is no FAIL")
    p.add_argument("--out", default="runs", help="where runs go, for the disk check (%(default)s)")
    p.add_argument("--no-build", action="store_true", help="do not build gsplat's CUDA kernels")
    p.add_argument("--json", action="store_true", help="print the checks as JSON")


def cmd_doctor(args) -> int:
    from .doctor.checks import cmd_doctor as run

    return run(args)


def cmd_tiny_models(args) -> int:
    from .guidance.tiny_models import save_tiny_models

    paths = save_tiny_models(args.dir, seed=args.seed, variant=args.variant)
    print(f"IF-like: {paths['if']}\nSD-like: {paths['sd']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .guidance.base import GuidanceError
    from .runs.trainer import TrainingCancelled, TrainingDiverged

    user_errors = (
        ValueError, FileNotFoundError, TrainingDiverged, TrainingCancelled, GuidanceError,
    )  # fmt: skip
    try:
        return {
            "reconstruct": cmd_reconstruct,
            "demo": cmd_reconstruct,
            "generate": cmd_generate,
            "serve": cmd_serve,
            "keys": cmd_keys,
            "mesh": cmd_mesh,
            "tiny-models": cmd_tiny_models,
            "doctor": cmd_doctor,
            "prior": cmd_prior,
        }[args.command](args)
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
