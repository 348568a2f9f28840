"""Text to 3D measured offline: the toy preset on the example-based prior, against ground truth.

    python bench/toy_text_to_3d.py                       # every catalogue prompt x 2 seeds
    python bench/toy_text_to_3d.py --study schedule --prompts "a toy car" "a robot" --seeds 0
    python bench/toy_text_to_3d.py --study all --subset  # the paper's claims on ~4 objects x 2

Each run is ``generate --prior catalogue`` (``runs.generate.run_generation``) with the variant's
change to the ``toy`` preset; the table gives held-out PSNR (dB, the ring of ``reconstruct`` on
white), the mesh's Chamfer distance, the multi-face score (dB; objects with a front; negative =
no second face) and seconds, per run and as means per variant. ``--steps-stage1/2`` shorten the
runs (say so when quoting them). ``--oracle`` runs the same variants with the oracle guidance on
the prompt's true mesh (known camera) instead of the prior: the ceiling of the Gaussians at these
sizes and steps, to tell the prior's shortfall from the representation's. Results go to
``OUT/results.json`` as they come.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "backend"))

from stabledreamer.config import RunConfig  # noqa: E402
from stabledreamer.presets import get_preset  # noqa: E402
from stabledreamer.runs.generate import run_generation  # noqa: E402
from stabledreamer.targets.catalogue import CATALOGUE  # noqa: E402

Variant = Callable[[RunConfig], None]
SUBSET = ("a toy creature", "a toy car", "a robot", "a mushroom")
"""About 4 objects for the studies: three with a front (face, headlights, face), one without."""


def _schedule(kind: str, end: float) -> Variant:
    def f(cfg: RunConfig) -> None:
        n = cfg.stages[0].noise
        n.schedule, n.t_max_end = kind, (n.t_max_start if kind == "constant" else end)

    return f


def _set(path: str, value) -> Variant:
    def f(cfg: RunConfig) -> None:
        obj = cfg
        *head, last = path.split(".")
        for part in head:
            obj = obj.stages[int(part[7:-1])] if part.startswith("stages[") else getattr(obj, part)
        setattr(obj, last, value)

    return f


def _one_stage(cfg: RunConfig) -> None:
    cfg.stages[0].steps += cfg.stages[1].steps
    cfg.stages = cfg.stages[:1]


STUDIES: dict[str, dict[str, Variant]] = {
    "default": {"toy preset": lambda cfg: None},
    "schedule": {
        "constant 0.98": _schedule("constant", 0.98),
        "step 0.98->0.5": _schedule("step", 0.5),
        "linear 0.98->0.5": _schedule("linear", 0.5),
        "sqrt 0.98->0.5": _schedule("sqrt", 0.5),
        "sqrt 0.98->0.2": _schedule("sqrt", 0.2),
    },
    "views": {
        "view prompts on": _set("example_prior.view_prompts.enabled", True),
        "view prompts off": _set("example_prior.view_prompts.enabled", False),
    },
    # The elevation above which a camera is "overhead" (threestudio's 60): the side bucket then
    # spans -10..threshold, and a render from 20 deg can match a side example from far higher.
    "overhead": {
        f"overhead above {d}": _set("example_prior.view_prompts.overhead_threshold_deg", float(d))
        for d in (60, 40, 30)
    },
    "guidance": {
        f"scale {s}": _set("example_prior.guidance_scale", s) for s in (1.0, 3.0, 7.5, 20.0)
    },
    "stages": {"two stages": lambda cfg: None, "one stage": _one_stage},
    "init": {f"init radius {r}": _set("init.radius", r) for r in (0.5, 0.8)},
    "weighting": {w: _set("stages[0].noise.weighting", w) for w in ("sds", "uniform", "snr")},
    # The detail stage's weighting (stage 1 keeps the preset's): sigma^2 is the toy default.
    "detail_weighting": {
        f"stage 2 {w}": _set("stages[1].noise.weighting", w) for w in ("sds", "snr")
    },
    "densify": {
        f"grow_grad2d {g}": _set("stages[0].strategy.grow_grad2d", g) for g in (0.1, 0.3, 1.0)
    },
}


def run_one(prompt: str, seed: int, variant: Variant, out: Path, args) -> dict:
    cfg = get_preset("toy")
    cfg.prompt, cfg.seed = prompt, seed
    cfg.example_prior.bank = args.bank
    cfg.debug_every = 0
    if args.threads:
        cfg.threads = args.threads
    variant(cfg)
    if args.steps_stage1:
        cfg.stages[0].steps = args.steps_stage1
    if args.steps_stage2 and len(cfg.stages) > 1:
        cfg.stages[1].steps = args.steps_stage2
    start = time.perf_counter()
    m = run_oracle(cfg, out) if args.oracle else run_generation(cfg, out, overwrite=True)
    return {
        "psnr_heldout": m.get("psnr_heldout"),
        "chamfer": m.get("chamfer"),
        "multi_face": m.get("multi_face"),
        "seconds": round(time.perf_counter() - start, 1),
        "gaussians": m.get("gaussians"),
    }


def run_oracle(cfg: RunConfig, out: Path) -> dict:
    """The same run with the oracle in every stage instead of the prior: x0_hat is the prompt's
    true mesh seen from the camera itself (``reconstruct``'s guidance), so the result is what the
    Gaussians can reach at these sizes, steps and noise (a ceiling); scored like ``generate``."""
    import torch

    from stabledreamer import gaussians as G
    from stabledreamer.guidance.oracle import OracleGuidance
    from stabledreamer.guidance.prior_bank import open_bank
    from stabledreamer.mesh import MeshError, gaussians_to_mesh
    from stabledreamer.runs.folder import open_run
    from stabledreamer.runs.prior_metrics import ground_truth_metrics
    from stabledreamer.runs.trainer import Trainer

    bank = open_bank(cfg.example_prior.bank)
    target = bank.target_mesh(cfg.prompt)
    for stage in cfg.stages:
        stage.guidance = "oracle"
    cfg, _ = open_run(cfg, out, overwrite=True, resume=False, device=None)

    def factory(stage, index: int) -> OracleGuidance:
        gen = torch.Generator().manual_seed(cfg.seed * 7919 + index)  # as reconstruct's
        return OracleGuidance(
            target, cfg.oracle, cfg.camera, stage.resolution, stage.resolution, gen
        )

    params = Trainer(cfg, out, factory).train()
    try:
        mesh = gaussians_to_mesh(params, cfg.mesh)
    except MeshError:
        mesh = None
    return {**ground_truth_metrics(params, mesh, cfg, bank, out), "gaussians": G.count(params)}


def _fmt(v, spec: str) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def _mean(rows: list[dict], key: str):
    vals = [r[key] for r in rows if r.get(key) is not None]
    return statistics.fmean(vals) if vals else None


def table(results: list[dict]) -> str:
    lines = [
        "| variant | prompt | seed | PSNR held-out (dB) | chamfer | multi-face (dB) | s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['variant']} | {r['prompt']} | {r['seed']} | {_fmt(r['psnr_heldout'], '.2f')} "
            f"| {_fmt(r['chamfer'], '.4f')} | {_fmt(r['multi_face'], '+.2f')} "
            f"| {_fmt(r['seconds'], '.0f')} |"
        )
    lines += ["", "| variant | runs | mean PSNR (dB) | mean chamfer | mean multi-face (dB) | "
              "multi-face > 0 | mean s |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for v in dict.fromkeys(r["variant"] for r in results):
        rows = [r for r in results if r["variant"] == v]
        faces = [r["multi_face"] for r in rows if r["multi_face"] is not None]
        rate = f"{sum(f > 0 for f in faces)}/{len(faces)}" if faces else "-"
        lines.append(
            f"| {v} | {len(rows)} | {_fmt(_mean(rows, 'psnr_heldout'), '.2f')} "
            f"| {_fmt(_mean(rows, 'chamfer'), '.4f')} | {_fmt(_mean(rows, 'multi_face'), '+.2f')} "
            f"| {rate} | {_fmt(_mean(rows, 'seconds'), '.0f')} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--study", default="default", choices=[*STUDIES, "all"])
    ap.add_argument(
        "--prompts", nargs="+", help="default: the catalogue (the subset with --subset)"
    )
    ap.add_argument("--subset", action="store_true", help=f"the study subset {SUBSET}")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--only", nargs="+", help="run only these variants of the study (by name)")
    ap.add_argument("--steps-stage1", type=int)
    ap.add_argument("--steps-stage2", type=int)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument(
        "--oracle",
        action="store_true",
        help="the oracle (true mesh, known camera) instead of the prior in every stage: a ceiling",
    )
    ap.add_argument("--bank", default="catalogue", help="the prior bank (default %(default)s)")
    ap.add_argument("--out", default="runs/bench_toy")
    args = ap.parse_args()
    prompts = args.prompts or (list(SUBSET) if args.subset else [e.prompt for e in CATALOGUE])
    studies = [s for s in STUDIES if s != "default"] if args.study == "all" else [args.study]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: list[dict] = []
    for study in studies:
        for name, variant in STUDIES[study].items():
            if args.only and name not in args.only:
                continue
            for prompt in prompts:
                for seed in args.seeds:
                    slug = "_".join(prompt.split())
                    run_dir = out / study / "_".join(name.split()) / f"{slug}_s{seed}"
                    row = run_one(prompt, seed, variant, run_dir, args)
                    results.append({"study": study, "variant": name, "prompt": prompt,
                                    "seed": seed, **row})  # fmt: skip
                    print(json.dumps(results[-1]), flush=True)
                    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
        print(f"\n## {study}\n\n{table([r for r in results if r['study'] == study])}\n", flush=True)


if __name__ == "__main__":
    main()
