"""Ground truth for text to 3D: when the prior's bank holds the prompt's mesh, score the result.

- ``psnr_heldout``: the Gaussians against the true object on white over the held-out ring of
  ``reconstruct`` (8 views at elevation 20 deg, azimuths 22.5 + 45 k), at ``eval_resolution``;
  ``heldout.png`` shows renders above and truth below.
- ``chamfer``: the run's mesh against the true mesh (``mesh.chamfer``), when a mesh was made.
- ``multi_face`` (objects with a front): over the ring's back views (the back bucket of the view
  prompts), PSNR(render, the true front seen from the mirrored camera and flipped left-right)
  minus PSNR(render, the true back), in dB. A second face at the back makes the render look like
  the mirrored front: positive; negative means no second face.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from ..cameras import heldout_cameras, orbit_cameras
from ..config import RunConfig
from ..guidance.prior_bank import PriorBank
from ..guidance.prompts import ViewPromptConfig, view_indices
from ..render import render
from ..targets.raster import render_mesh
from .debug_images import image_grid, save_png
from .reconstruct import psnr

SUPERSAMPLE = 4
"""The truth's anti-aliasing, as the oracle's held-out targets (``OracleConfig.supersample``)."""


@torch.no_grad()
def ground_truth_metrics(
    params: dict[str, Tensor], mesh, cfg: RunConfig, bank: PriorBank, run_dir: Path
) -> dict:
    """The metrics above for ``cfg.prompt`` (``mesh``: the run's mesh or None)."""
    truth_mesh = bank.target_mesh(cfg.prompt)
    res = cfg.eval_resolution
    dist = 0.5 * sum(cfg.camera.distance)
    fov = 0.5 * sum(cfg.camera.fov_y_deg)
    cams = heldout_cameras(res, res, distance=dist, fov_y_deg=fov)
    white = torch.ones(len(cams), 3)
    pred = render(params, cams, white).rgb.clamp(0, 1)
    truth, _ = render_mesh(truth_mesh, cams, torch.ones(3), supersample=SUPERSAMPLE)
    scores = psnr(pred, truth)
    save_png(run_dir / "heldout.png", image_grid(torch.cat([pred, truth]), columns=len(cams)))
    out: dict = {"psnr_heldout": float(scores.mean()), "psnr_heldout_views": scores.tolist()}
    if bank.has_front(cfg.prompt):
        out["multi_face"] = multi_face_score(pred, cams, truth, truth_mesh)
    if mesh is not None:
        from ..mesh.chamfer import chamfer_distance

        m = cfg.mesh
        out["chamfer"] = chamfer_distance(
            mesh.vertices, mesh.faces, truth_mesh, m.chamfer_samples, cfg.seed, m.chamfer_views,
            m.chamfer_resolution,
        )  # fmt: skip
    return out


def multi_face_score(pred: Tensor, cams, truth: Tensor, truth_mesh) -> float:
    """Mean over the back views of PSNR(render, mirrored true front) - PSNR(render, true back)."""
    back = view_indices(ViewPromptConfig(), cams.azimuth_deg, cams.elevation_deg) == 2
    idx = back.nonzero()[:, 0]
    mirror = orbit_cameras(
        (180.0 - cams.azimuth_deg[idx]) % 360.0, cams.elevation_deg[idx], cams.distance[idx],
        _fov_deg(cams)[idx], cams.width, cams.height,
    )  # fmt: skip
    front, _ = render_mesh(truth_mesh, mirror, torch.ones(3), supersample=SUPERSAMPLE)
    front = front.flip(dims=[2])  # a mirror image: left and right swap
    return float((psnr(pred[idx], front) - psnr(pred[idx], truth[idx])).mean())


def _fov_deg(cams) -> Tensor:
    return torch.rad2deg(2.0 * torch.atan(0.5 * cams.height / cams.Ks[:, 1, 1]))
