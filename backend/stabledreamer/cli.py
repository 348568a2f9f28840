"""The ``stabledreamer`` command line."""

from __future__ import annotations

import argparse
import json
import os
import sys
import typing
from pathlib import Path

from .errors import ConfigError, InputError, StableDreamerError


def _add_device_option(
    p: argparse.ArgumentParser,
    more: str = "; also with --resume (a run may continue on another device)",
) -> None:
    p.add_argument(
        "--device",
        help="auto (default: CUDA when present, else the CPU) | cpu | cuda | cuda:N" + more,
    )


def _add_set_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any setting of the run config, as a dotted key (e.g. stages.0.steps=300, "
        "camera.batch_size=2, geometry.noise.schedule=linear); VALUE is JSON (numbers, true, "
        "[1, 2]) or else a string; repeatable, applied after the other options",
    )


def _set_pairs(items: list[str]) -> dict:
    """``--set KEY=VALUE`` pairs as overrides (VALUE parsed as JSON, else kept as a string)."""
    out = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: write KEY=VALUE, e.g. --set stages.0.steps=300")
        try:
            out[key.strip()] = json.loads(raw)
        except ValueError:
            out[key.strip()] = raw
    return out


def _add_run_options(p: argparse.ArgumentParser) -> None:
    from .config_space import OracleMode, Schedule

    p.add_argument("--steps", type=int, help="training steps (of the last stage)")
    p.add_argument("--resolution", type=int, help="training render size in pixels (square)")
    p.add_argument("--seed", type=int, help="random seed (default 0)")
    p.add_argument(
        "--preset", default="reconstruct", help="named configuration (default %(default)s)"
    )
    p.add_argument(
        "--oracle-mode",
        choices=typing.get_args(OracleMode),
        help="imperfect: x0 estimate blurred/perturbed more at high noise, like a real denoiser",
    )
    p.add_argument("--schedule", choices=typing.get_args(Schedule), help="t_max annealing schedule")
    _add_set_option(p)
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
    from .models.commands import add_parser as _add_models_parser

    _add_models_parser(sub)
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
    """``reconstruct``/``demo``: the options as overrides of the preset, through the one path
    every run takes (``presets.resolve``)."""
    from .presets import get_preset
    from .runs.folder import PROCEDURAL_DEMO

    if args.command == "demo":
        target = PROCEDURAL_DEMO
    else:
        if not args.target:
            raise InputError("give the target mesh: stabledreamer reconstruct MESH --out DIR")
        path = Path(args.target)
        if not path.is_file():
            raise InputError(f"{path}: no such file; give a .glb/.gltf/.obj/.ply mesh")
        target = str(path.resolve())
    stages = len(get_preset(args.preset).stages)
    last = f"stages.{stages - 1}"
    options = {
        "--steps": {f"{last}.steps": args.steps},
        "--resolution": {f"{last}.resolution": args.resolution, "eval_resolution": args.resolution},
        "--seed": {"seed": args.seed},
        "--oracle-mode": {"oracle.mode": args.oracle_mode},
        "--schedule": {f"stages.{i}.noise.schedule": args.schedule for i in range(stages)},
    }
    return _resolve(args, options, {"target": target})


def _resolve(args, options: dict[str, dict], fixed: dict, models: str | None = None):
    """``presets.resolve`` with the given options (flag -> the settings it sets) and ``--set``
    pairs as overrides, and the model set; a refused value is reported under its flag."""
    from .presets import resolve

    overrides, flag_of = {}, {}
    for flag, settings in options.items():
        for key, value in settings.items():
            if value is not None:
                overrides[key], flag_of[key] = value, flag
    overrides.update(_set_pairs(args.set))
    try:
        return resolve(args.preset, overrides, fixed=fixed, models=models)
    except ConfigError as e:
        key, sep, why = str(e).partition(": ")
        if sep and key in flag_of and not args.set:
            raise ConfigError(f"{flag_of[key]} {overrides[key]}: {why}", code=e.code) from None
        raise


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
    from .models.sets import DEFAULT_SET, SET_IDS

    p.add_argument(
        "--models",
        choices=SET_IDS,
        help=f"model set (default {DEFAULT_SET}): if-sd (the paper's, research and non-commercial "
        "only), if-sd-small (smaller IF), sd-only (Stable Diffusion in both stages, commercial "
        "use allowed); `stabledreamer models list` shows them",
    )
    p.add_argument(
        "--download",
        action="store_true",
        help="download the set's missing models first (with progress) instead of failing",
    )
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
        "--memory",
        default="auto",
        choices=("auto", "8", "12", "16", "24"),
        help="GPU memory tier in GB: where the models live (docs/gpu.md); auto (default) "
        "picks one from the GPU's free memory",
    )
    p.add_argument(
        "--init", default="", help="sphere (default), a point cloud / 3DGS .ply, or a mesh"
    )
    _add_set_option(p)
    p.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    p.add_argument(
        "--resume", nargs="?", const="", metavar="RUN_DIR",
        help="continue RUN_DIR (default: --out) from its last checkpoint",
    )  # fmt: skip
    follow = p.add_mutually_exclusive_group()
    follow.add_argument(
        "--refine", metavar="RUN_DIR",
        help="rerun RUN_DIR's detail stage from its final Gaussians with the prompt and "
        "--negative given here (default: its own): geometry kept, colour and detail redone",
    )  # fmt: skip
    follow.add_argument(
        "--continue", dest="continue_from", metavar="RUN_DIR",
        help="add --steps N steps to RUN_DIR's last stage, held at its final noise level",
    )  # fmt: skip
    p.add_argument(
        "--steps", type=int,
        help="with --continue: steps to add; with --refine: steps of the rerun stage "
        "(default: the parent's)",
    )  # fmt: skip
    _add_device_option(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def cmd_followup(args, out, resume: bool) -> dict:
    """``generate --refine RUN_DIR`` / ``--continue RUN_DIR`` (or ``--resume`` of such a run):
    the follow-up path of ``runs.followup``, shared with the service."""
    from .runs.followup import FollowUp, run_followup

    f = None
    if not resume:
        if args.steps is not None and args.steps < 1:
            raise ConfigError(f"--steps {args.steps}: must be at least 1")
        if (args.prior or args.preset or args.init or args.steps_stage1 or args.steps_stage2
                or getattr(args, "models", None)):  # fmt: skip
            raise ConfigError(
                "--refine/--continue take the parent's settings: leave out --prior, --preset, "
                "--models, --init and --steps-stage1/2 (use --steps)"
            )
        f = FollowUp(
            mode="refine" if args.refine else "continue",
            parent=Path(args.refine or args.continue_from),
            prompt=args.prompt or "",
            negative=args.negative,
            steps=args.steps or 0,
            seed=args.seed,
        )
    fixed = {}
    if args.if_model:
        fixed["deepfloyd_if.model"] = args.if_model
    if args.sd_model:
        fixed["stable_diffusion.model"] = args.sd_model
    callback, bar = _progress_printer(args.quiet)
    try:
        return run_followup(
            f, out, overwrite=args.overwrite, resume=resume, callback=callback,
            device=args.device, cpu_offload=args.cpu_offload,
            preflight=_preflight_for(args, out), overrides=_set_pairs(args.set), fixed=fixed,
        )  # fmt: skip
    finally:
        if bar is not None:
            bar.close()


def _run_dir_and_saved_config(args):
    """The run folder (``--resume RUN_DIR`` or ``--out``) and, when resuming, its saved config."""
    from .runs.folder import load_run_config

    if args.resume:
        args.out = args.resume
    if not args.out:
        raise InputError("give the run folder: --out DIR (or --resume RUN_DIR)")
    out = Path(args.out)
    if args.resume is None:
        return out, None
    if not (out / "config.json").is_file():
        raise InputError(f"{out}: not a run folder (no config.json); nothing to resume")
    return out, load_run_config(out)


def _preflight_for(args, out):
    """The run's preflight (``doctor.preflight``): checks before any model loads, says what it
    decided on stderr, returns the memory tier."""

    def check(cfg):
        from .doctor.preflight import preflight

        def say(msg: str) -> None:
            print(f"stabledreamer: {msg}", file=sys.stderr, flush=True)

        pf = preflight(cfg, out, memory=args.memory, cpu_offload=args.cpu_offload, progress=say)
        tier = f", {pf.memory_tier} GB memory tier" if pf.memory_tier else ""
        say(f"preflight ok in {pf.seconds:.1f} s: {pf.device}, renderer {pf.render_backend}{tier}")
        for note in pf.notes:
            say(f"note: {note}")
        return pf.memory_tier

    return check


def cmd_generate(args) -> int:
    from .presets import TEXT_PRESETS
    from .runs.followup import is_followup
    from .runs.generate import run_generation

    out, cfg = _run_dir_and_saved_config(args)
    resume = cfg is not None
    if args.refine or args.continue_from or (resume and is_followup(out)):
        metrics = cmd_followup(args, out, resume)
        print(f"{metrics['gaussians']} Gaussians, {metrics['seconds']:.0f} s ({metrics['mode']} "
              f"of {metrics['parent']}); outputs in {out}/")  # fmt: skip
        return 0
    if args.steps is not None:
        raise ConfigError("--steps goes with --refine or --continue (else --steps-stage1/2)")
    if not resume:
        args.preset = args.preset or ("toy" if args.prior else "preview")
        if args.preset not in (*TEXT_PRESETS, "toy"):
            raise ConfigError(
                f"unknown preset {args.preset!r}; choose one of {', '.join(TEXT_PRESETS)} or toy",
                code="unknown_preset",
            )
        options = {
            "--seed": {"seed": args.seed},
            "--negative": {
                "deepfloyd_if.negative_prompt": args.negative,
                "stable_diffusion.negative_prompt": args.negative,
            },
            "--if-model": {"deepfloyd_if.model": args.if_model},
            "--sd-model": {"stable_diffusion.model": args.sd_model},
            "--steps-stage1": {"stages.0.steps": args.steps_stage1},
            "--steps-stage2": {"stages.1.steps": args.steps_stage2},
            "--sd-resolution": {
                "stages.1.resolution": args.sd_resolution,
                "stable_diffusion.resolution": args.sd_resolution,
            },
            "--prior": {"example_prior.bank": _prior_bank(args.prior) if args.prior else None},
        }
        if args.models and args.prior:
            raise ConfigError("--models chooses diffusion models; --prior uses none: drop one")
        cfg = _resolve(
            args, options, {"prompt": args.prompt or "", "init_from": args.init}, args.models
        )
        if args.prior and not all(s.guidance == "example_prior" for s in cfg.stages):
            raise ConfigError(
                f"--prior runs the toy preset, not {cfg.preset!r}: leave out --preset"
            )
    if args.download and cfg.models:
        _download_run_models(cfg, args.quiet)
    if cfg.models:  # the token `models token set` stored, for gated models' checks
        from .models.token import export_stored_token

        export_stored_token()
    callback, bar = _progress_printer(args.quiet)
    try:
        metrics = run_generation(
            cfg, out, overwrite=args.overwrite, resume=resume, callback=callback,
            device=args.device, cpu_offload=args.cpu_offload,
            preflight=_preflight_for(args, out),
        )  # fmt: skip
    finally:
        if bar is not None:
            bar.close()
    print(f"{metrics['gaussians']} Gaussians, {metrics['seconds']:.0f} s; outputs in {out}/")
    if "model_set" in metrics:
        ms = metrics["model_set"]
        print(f"model set {ms['id']}: {ms['output_use']}")
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


def _download_run_models(cfg, quiet: bool) -> None:
    """``generate --download``: fetch the set's missing models (progress on stderr) first."""
    from .models import ModelsMissingError
    from .models.commands import cmd_download
    from .models.store import require_run_models

    try:
        require_run_models(cfg)
    except ModelsMissingError:
        code = cmd_download(argparse.Namespace(set=cfg.models, quiet=quiet))
        if code:
            raise KeyboardInterrupt from None


def _prior_bank(bank: str) -> str:
    """``--prior``: the built-in catalogue, or a bank folder (made absolute)."""
    from .guidance.prior_bank import CATALOGUE

    if bank == CATALOGUE:
        return bank
    if not Path(bank).is_dir():
        raise InputError(
            f"--prior {bank}: no such folder; build one with `stabledreamer prior build "
            f"{bank} --object PROMPT=MESH`, or use --prior catalogue"
        )
    return str(Path(bank).resolve())


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
            raise InputError(f'--object {spec!r}: write it as "PROMPT=MESH"')
        specs.append((prompt, mesh))
    unknown = set(" ".join(f.split()) for f in args.front) - {p for p, _ in specs}
    if unknown:
        raise InputError(f"--front {sorted(unknown)}: not the prompt of an --object")
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
    from .models.sets import DEFAULT_SET, SET_IDS

    srv.add_argument(
        "--models",
        choices=SET_IDS,
        default=DEFAULT_SET,
        help=f"model set of text jobs whose submit names none (default {DEFAULT_SET}); "
        "`stabledreamer models list` shows the sets and their licences",
    )
    srv.add_argument(
        "--max-queue", type=int, help="jobs queued or running at once (default: the protocol's 32)"
    )
    srv.add_argument(
        "--workers",
        type=int,
        default=1,
        help="worker processes, each training one job at a time and keeping its models loaded "
        "between jobs (default %(default)s)",
    )
    srv.add_argument(
        "--standby",
        type=int,
        default=0,
        help="spare worker processes kept started (torch imported, nothing loaded): a job "
        "whose worker died resumes on one at once instead of waiting seconds for a new "
        "process; each costs the memory of an idle Python with torch (default %(default)s; "
        "with --ray, see --ray-standby)",
    )
    srv.add_argument(
        "--cancel-grace-s",
        type=float,
        default=5.0,
        help="a cancelled job's worker that has not stopped by then is killed and replaced "
        "(default %(default)s)",
    )
    srv.add_argument(
        "--gpus",
        help="one worker per GPU, each seeing only its own: auto (every GPU) or indices such as "
        "0,1 (replaces --workers)",
    )
    srv.add_argument(
        "--handshake-s",
        type=float,
        default=5.0,
        help="drop a connection that has not finished its handshake by then (default %(default)s)",
    )
    srv.add_argument(
        "--stall-s",
        type=float,
        default=30.0,
        help="mark a job stalled when its worker is silent this long (default %(default)s)",
    )
    keep = srv.add_argument_group("retention (finished jobs deleted; running ones never)")
    keep.add_argument("--keep-jobs", type=int, help="finished jobs kept (default 1000)")
    keep.add_argument("--keep-days", type=float, help="days a finished job is kept (default 30)")
    keep.add_argument("--keep-gb", type=float, help="GiB the finished jobs may use (default 50)")
    keep.add_argument(
        "--keep-unfetched-days",
        type=float,
        help="days a result no client fetched is kept, whatever the limits (default 90)",
    )
    srv.add_argument(
        "--preview-points",
        type=int,
        default=100_000,
        help="most Gaussians per preview (default %(default)s)",
    )

    farm = srv.add_argument_group("Ray cluster (the farm extra: pip install '.[farm]')")
    farm.add_argument(
        "--ray",
        metavar="auto|local|ADDRESS",
        help="run each job in a Ray actor: auto (this machine's cluster, else a new local one), "
        "local (a new local one) or a cluster's HOST:PORT; see docs/farm.md",
    )
    farm.add_argument(
        "--ray-gpus-per-job",
        type=float,
        default=1.0,
        help="GPUs each job asks Ray for (0: CPU jobs; default %(default)s)",
    )
    farm.add_argument(
        "--ray-jobs",
        type=int,
        default=0,
        help="jobs at once (default: as many as the cluster's GPUs allow)",
    )
    farm.add_argument(
        "--ray-standby",
        type=int,
        default=1,
        help="workers kept started beyond the idle one, each holding its GPU, so a failover or "
        "the next queued job starts at once (default %(default)s)",
    )
    farm.add_argument(
        "--ray-listen",
        default="",
        metavar="HOST:PORT",
        help="where workers connect back to the service (default: loopback on one machine, "
        "else this machine's address on a free port)",
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
        raise ConfigError(str(e)) from None
    farm = None
    if args.ray:  # Ray is imported only when asked for, and only once the service starts
        from .server.farm import FarmConfig, require_ray

        require_ray()
        farm = FarmConfig(args.ray.strip(), args.ray_gpus_per_job, listen=args.ray_listen,
                          jobs=args.ray_jobs, standby=args.ray_standby)  # fmt: skip
    from .server.service import ServiceConfig, serve

    limits = DEFAULT_LIMITS
    if args.max_queue is not None:
        if args.max_queue <= 0:
            raise ConfigError(f"--max-queue must be positive, got {args.max_queue}")
        limits = dataclasses.replace(limits, max_queue=args.max_queue)
    if not 0 <= args.preview_points <= limits.max_preview_points:
        raise ConfigError(f"--preview-points must be in [0, {limits.max_preview_points}]")
    models = [f"if:{args.if_model}"] if args.if_model else []
    models += [f"sd:{args.sd_model}"] if args.sd_model else []
    from .server.retention import RetentionPolicy

    keep = {
        "keep_jobs": args.keep_jobs,
        "keep_days": args.keep_days,
        "keep_bytes": None if args.keep_gb is None else int(args.keep_gb * 2**30),
        "unfetched_days": args.keep_unfetched_days,
    }
    if not 2.0 <= args.stall_s <= 86_400:
        raise ValueError(f"--stall-s must be in [2, 86400], got {args.stall_s}")
    if not 0.1 <= args.handshake_s <= 300:
        raise ValueError(f"--handshake-s must be in [0.1, 300], got {args.handshake_s}")
    retention = RetentionPolicy(**{k: v for k, v in keep.items() if v is not None})
    if not 0 <= args.cancel_grace_s <= 3600:
        raise ConfigError(f"--cancel-grace-s must be in [0, 3600], got {args.cancel_grace_s}")
    if not 1 <= args.workers <= 64:
        raise ConfigError(f"--workers must be in [1, 64], got {args.workers}")
    if not 0 <= args.standby <= 8:
        raise ConfigError(f"--standby must be in [0, 8], got {args.standby}")
    from .server.settings import resolve_gpus

    gpus = resolve_gpus(args.gpus) if args.gpus else None
    cfg = ServiceConfig(
        bind=args.bind,
        state=Path(args.state),
        curve=not args.no_curve,
        keys=Path(args.keys) if args.keys else None,
        limits=limits,
        preview_points=args.preview_points,
        models=models,
        model_set=args.models,
        retention=retention,
        handshake_s=args.handshake_s,
        stall_s=args.stall_s,
        workers=args.workers,
        standby=args.standby,
        cancel_grace_s=args.cancel_grace_s,
        gpus=gpus,
        farm=farm,
    )
    import zmq

    try:
        code = serve(cfg)
    except zmq.ZMQError as e:
        raise StableDreamerError(f"cannot listen on {args.bind}: {e}") from None
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
        raise ConfigError(f"--out must name a .glb file, got {out}")
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
    from .models.sets import SET_IDS

    p.add_argument(
        "--models",
        choices=SET_IDS,
        help="check this model set's models (sd-only needs neither DeepFloyd IF nor a token)",
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
    """Run a command. A ``StableDreamerError`` (what the user can fix) is one line and exit code
    2; anything else is a bug and keeps its traceback."""
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "models":  # no torch: answers at once
        from .models import commands

        try:
            return commands.run(commands.build_parser().parse_args(argv))
        except StableDreamerError as e:
            print(f"stabledreamer: error: {e}", file=sys.stderr)
            return 2
    args = build_parser().parse_args(argv)
    from .render.raster_torch import tune_allocator

    tune_allocator()  # this process renders: keep the rasteriser's freed arenas (see there)
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
    except StableDreamerError as e:
        print(f"stabledreamer: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
