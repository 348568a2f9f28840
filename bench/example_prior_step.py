"""Time one prediction of the example-based prior (a training step's guidance call).

    python bench/example_prior_step.py [--bank catalogue|DIR] [--batch 4] [--repeats 20]

For each resolution of the bank: the median time of ``predict_noise`` for a batch of random
cameras (stratified azimuths, elevations -10..90 as the toy preset), random backgrounds and
timesteps drawn over the whole range, with the number of images in the bank. The load average is
printed too, and the CPU time (all threads): on a shared machine the wall time is not the
prediction's own.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "backend"))

from stabledreamer.cameras import CameraConfig, sample_cameras  # noqa: E402
from stabledreamer.guidance.base import GuidanceContext  # noqa: E402
from stabledreamer.guidance.example_prior import (  # noqa: E402
    ExamplePriorConfig,
    ExamplePriorGuidance,
)
from stabledreamer.guidance.prior_bank import open_bank  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--bank", default="catalogue")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    bank = open_bank(args.bank)
    gen = torch.Generator().manual_seed(0)
    cam_cfg = CameraConfig(elevation_deg=(-10.0, 90.0), batch_size=args.batch)
    for res in bank.resolutions:
        start = time.perf_counter()
        g = ExamplePriorGuidance(bank.prompts[0], bank, ExamplePriorConfig(), res)
        setup = time.perf_counter() - start
        times, cpu = [], []
        for _ in range(args.repeats + 2):
            cams = sample_cameras(cam_cfg, res, res, gen)
            ctx = GuidanceContext(cams, torch.rand(args.batch, 3, generator=gen), 0)
            t = torch.randint(20, 980, (args.batch,), generator=gen)
            x_t = torch.randn(args.batch, 3, res, res, generator=gen)
            s, c = time.perf_counter(), time.process_time()
            g.predict_noise(x_t, t, ctx)
            times.append(time.perf_counter() - s)
            cpu.append(time.process_time() - c)
        ms = 1000 * statistics.median(times[2:])
        cpu_ms = 1000 * statistics.median(cpu[2:])
        print(
            f"{res}x{res}: {len(bank)} images, batch {args.batch}: {ms:.1f} ms per prediction, "
            f"{cpu_ms:.1f} ms CPU time "
            f"(median of {args.repeats}; setup {setup:.1f} s; load average "
            f"{os.getloadavg()[0]:.1f}, {torch.get_num_threads()} threads)"
        )


if __name__ == "__main__":
    main()
