"""Compare t_max annealing schedules with the imperfect oracle (a denoiser whose x0 estimate is
blurrier and more perturbed at high t), at one fixed budget, side by side in one run.

    python bench/schedules.py [--steps 600] [--resolution 64] [--seeds 0 1]

Prints held-out PSNR per schedule (mean over seeds). With a perfect oracle the SDS noise cancels
and schedules barely matter; the imperfect mode is where annealing's effect shows on a CPU.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "backend"))

from stabledreamer.presets import get_preset  # noqa: E402
from stabledreamer.runs.reconstruct import PROCEDURAL_DEMO, run_reconstruction  # noqa: E402

SCHEDULES = ("constant", "step", "linear", "sqrt")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--mode", default="imperfect", choices=["perfect", "imperfect"])
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for schedule in SCHEDULES:
            scores, secs = [], []
            for seed in args.seeds:
                cfg = get_preset("reconstruct")
                cfg.target, cfg.seed = PROCEDURAL_DEMO, seed
                cfg.oracle.mode = args.mode
                cfg.debug_every = 0
                cfg.eval_resolution = args.resolution
                st = cfg.stages[0]
                st.steps, st.resolution, st.noise.schedule = args.steps, args.resolution, schedule
                t0 = time.perf_counter()
                m = run_reconstruction(cfg, Path(tmp) / f"{schedule}_{seed}")
                secs.append(time.perf_counter() - t0)
                scores.append(m["psnr_heldout"])
            rows.append(
                (schedule, statistics.mean(scores), min(scores), max(scores), statistics.mean(secs))
            )
    noise = get_preset("reconstruct").stages[0].noise
    print(
        f"\noracle={args.mode} steps={args.steps} res={args.resolution} seeds={args.seeds} "
        f"t in [{noise.t_min}, t_max], t_max {noise.t_max_start} -> {noise.t_max_end}"
    )
    print(f"{'schedule':<10} {'psnr_heldout':>13} {'min':>7} {'max':>7} {'s/run':>7}")
    for name, mean, lo, hi, s in rows:
        print(f"{name:<10} {mean:>13.2f} {lo:>7.2f} {hi:>7.2f} {s:>7.0f}")


if __name__ == "__main__":
    main()
