"""Is the true object a fixed point of the example-based prior? Its targets for a perfect render.

    python bench/example_prior_fixed_point.py                       # the catalogue, 64 and 128 px
    python bench/example_prior_fixed_point.py --prompts "a coffee mug" --t 0.1 0.5 0.9
    python bench/example_prior_fixed_point.py --runs runs/bench_toy/default/toy_preset/*_s0

For each prompt, the true object is rendered on white from the held-out ring (elevation 20 deg,
8 azimuths: the views ``psnr_heldout`` scores), noised at t (``--draws`` noises each) and denoised
by the prior exactly as SDS does (view buckets, guidance scale of the ``toy`` preset); the table
gives PSNR(x0_hat, truth) in dB. A perfect result gets these targets: where they are far from the
truth, SDS pulls a perfect render away from it, whatever the optimiser or the representation.
``nearest`` is the prompt's bank image of the same bucket nearest to the truth (L2 on white), with
its angle to the camera and its elevation (the ring's is 20 deg): the sharpest target the prior can
give (its low-t snap). ``--runs DIR ...`` (run folders of ``generate --prior``) does the same for
each run's result (``gaussians.ply``) rendered from the ring instead of the truth: PSNR(x0_hat,
truth) and PSNR(x0_hat, the render) say whether the result is a fixed point of the prior and
how far from the truth that fixed point lies.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "backend"))

from stabledreamer.cameras import heldout_cameras  # noqa: E402
from stabledreamer.guidance.base import GuidanceContext  # noqa: E402
from stabledreamer.guidance.example_prior import ExamplePriorGuidance  # noqa: E402
from stabledreamer.guidance.prior_bank import open_bank  # noqa: E402
from stabledreamer.guidance.prompts import view_indices  # noqa: E402
from stabledreamer.ply import load_ply  # noqa: E402
from stabledreamer.presets import get_preset  # noqa: E402
from stabledreamer.render import render  # noqa: E402
from stabledreamer.runs.reconstruct import psnr  # noqa: E402
from stabledreamer.targets.raster import render_mesh  # noqa: E402


def _angle_deg(az1, el1, az2, el2) -> torch.Tensor:
    """Great-circle angle between view directions (degrees)."""
    az1, el1, az2, el2 = (torch.deg2rad(torch.as_tensor(v, dtype=torch.float64)) for v in
                          (az1, el1, az2, el2))  # fmt: skip
    c = torch.sin(el1) * torch.sin(el2) + torch.cos(el1) * torch.cos(el2) * torch.cos(az1 - az2)
    return torch.rad2deg(torch.arccos(c.clamp(-1.0, 1.0)))


@torch.no_grad()
def measure(
    prompt: str, bank, resolution: int, ts: list[float], draws: int, seed: int, run=None,
    overhead_deg: float | None = None,
) -> dict:  # fmt: skip
    cfg = get_preset("toy").example_prior
    if overhead_deg is not None:
        cfg.view_prompts.overhead_threshold_deg = overhead_deg
    guidance = ExamplePriorGuidance(prompt, bank, cfg, resolution)
    cams = heldout_cameras(resolution, resolution, bank.distance, bank.fov_y_deg)
    white = torch.ones(len(cams), 3)
    truth, _ = render_mesh(bank.target_mesh(prompt), cams, torch.ones(3), supersample=4)
    source = truth
    if run is not None:  # the run's Gaussians, from the same cameras on the same white
        source = render(load_ply(Path(run) / "gaussians.ply"), cams, white).rgb.clamp(0, 1)
    x = guidance.encode(source)
    ctx = GuidanceContext(cameras=cams, background=white, step=0)
    gen = torch.Generator().manual_seed(seed)
    row: dict = {}
    for tf in ts:
        t = torch.full((len(cams),), int(tf * guidance.num_train_timesteps), dtype=torch.long)
        a, s = (v.view(-1, 1, 1, 1) for v in guidance.alphas_sigmas(t))
        scores, selfs = [], []
        for _ in range(draws):
            x_t = a * x + s * torch.randn(x.shape, generator=gen)
            x0 = guidance.decode(guidance.predict_x0(x_t, t, ctx))
            scores.append(psnr(x0, truth).mean().item())
            selfs.append(psnr(x0, source).mean().item())
        row[tf] = statistics.fmean(scores)
        row[("self", tf)] = statistics.fmean(selfs)
    # The nearest bank image of the prompt in each camera's bucket, on white.
    rgb, alpha = bank.images(resolution)
    k = bank.index_of(prompt)
    mine = bank.labels == k
    bucket = view_indices(cfg.view_prompts, bank.azimuth_deg, bank.elevation_deg)
    cam_bucket = view_indices(cfg.view_prompts, cams.azimuth_deg, cams.elevation_deg)
    near_psnr, near_angle, near_el = [], [], []
    for i in range(len(cams)):
        idx = (mine & (bucket == cam_bucket[i])).nonzero()[:, 0]
        imgs = rgb[idx] + (1.0 - alpha[idx])  # on white
        d = ((imgs - source[i]) ** 2).flatten(1).mean(1)
        j = int(d.argmin())
        near_psnr.append(psnr(imgs[j : j + 1], source[i : i + 1]).item())
        near_el.append(float(bank.elevation_deg[idx[j]]))
        near_angle.append(
            _angle_deg(
                cams.azimuth_deg[i],
                cams.elevation_deg[i],
                bank.azimuth_deg[idx[j]],
                bank.elevation_deg[idx[j]],
            ).item()  # fmt: skip
        )
    row["nearest"] = statistics.fmean(near_psnr)
    row["angle"] = statistics.fmean(near_angle)
    row["elevation"] = statistics.fmean(near_el)
    if run is not None:
        row["render"] = psnr(source, truth).mean().item()
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--prompts", nargs="+", help="default: every prompt of the bank")
    ap.add_argument("--runs", nargs="+", help="run folders: their results instead of the truth")
    ap.add_argument("--bank", default="catalogue")
    ap.add_argument("--resolutions", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--t", type=float, nargs="+", default=[0.1, 0.3, 0.5, 0.7, 0.9])
    ap.add_argument("--draws", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--overhead-deg", type=float, help="the overhead bucket's threshold (toy's)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    bank = open_bank(args.bank)
    if args.runs:
        items = [
            (json.loads((Path(r) / "config.json").read_text())["prompt"], r) for r in args.runs
        ]
    else:
        items = [(p, None) for p in (args.prompts or bank.prompts)]
    for res in args.resolutions:
        head = " | ".join(f"t={t:g}" for t in args.t)
        what = "the run's render" if args.runs else "the true render"
        print(f"\n{res} px: PSNR(x0_hat of {what}, truth) [PSNR(x0_hat, {what})], dB, ring mean\n")
        first = "| run | render vs truth " if args.runs else "| prompt "
        print(f"{first}| {head} | nearest example: PSNR | angle (deg) | elevation (deg) |")
        print("|---|" + "---|" * (len(args.t) + 3 + bool(args.runs)))
        for prompt, run in items:
            r = measure(prompt, bank, res, args.t, args.draws, args.seed, run, args.overhead_deg)
            vals = " | ".join(f"{r[t]:.2f} [{r[('self', t)]:.2f}]" for t in args.t)
            first = f"| {run} | {r['render']:.2f} " if run else f"| {prompt} "
            print(
                f"{first}| {vals} | {r['nearest']:.2f} | {r['angle']:.1f} | {r['elevation']:.1f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
