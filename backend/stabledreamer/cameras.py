"""Cameras: the orbit convention (docs/architecture.md), intrinsics, sampling, held-out rings.

World frame is Blender's: Z up, metres. Azimuth 0 puts the camera on -Y looking at the front of
the object, azimuth 90 deg on +X (Blender's Right view); elevation is measured up from the XY plane.
Camera matrices follow gsplat / OpenCV: ``viewmats`` map world to camera with x right, y down,
z forward; ``Ks`` are pinhole intrinsics in pixels with the principal point at the image centre.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass
class Cameras:
    """A batch of C pinhole cameras sharing one image size."""

    viewmats: Tensor  # [C, 4, 4] world -> camera (OpenCV axes)
    Ks: Tensor  # [C, 3, 3] intrinsics in pixels
    width: int
    height: int
    azimuth_deg: Tensor = field(default=None)  # [C] orbit azimuth (for view-dependent prompts)
    elevation_deg: Tensor = field(default=None)  # [C]
    distance: Tensor = field(default=None)  # [C]

    def __post_init__(self) -> None:
        c = self.viewmats.shape[0]
        if self.viewmats.shape != (c, 4, 4) or self.Ks.shape != (c, 3, 3):
            raise ValueError(
                f"Cameras need viewmats [C,4,4] and Ks [C,3,3]; got {tuple(self.viewmats.shape)} "
                f"and {tuple(self.Ks.shape)}"
            )
        if self.azimuth_deg is None:
            self.azimuth_deg, self.elevation_deg, self.distance = orbit_angles(self.viewmats)

    def __len__(self) -> int:
        return self.viewmats.shape[0]

    def __getitem__(self, idx) -> Cameras:
        if isinstance(idx, int):
            idx = slice(idx, idx + 1)
        return Cameras(
            self.viewmats[idx],
            self.Ks[idx],
            self.width,
            self.height,
            self.azimuth_deg[idx],
            self.elevation_deg[idx],
            self.distance[idx],
        )

    def to(self, device: torch.device | str) -> Cameras:
        return Cameras(
            self.viewmats.to(device),
            self.Ks.to(device),
            self.width,
            self.height,
            self.azimuth_deg.to(device),
            self.elevation_deg.to(device),
            self.distance.to(device),
        )

    def resized(self, width: int, height: int) -> Cameras:
        """The same cameras with the image scaled to ``width`` x ``height`` (same field of view)."""
        Ks = self.Ks.clone()
        Ks[:, 0] *= width / self.width
        Ks[:, 1] *= height / self.height
        return Cameras(
            self.viewmats, Ks, width, height, self.azimuth_deg, self.elevation_deg, self.distance
        )

    @property
    def device(self) -> torch.device:
        return self.viewmats.device

    @property
    def positions(self) -> Tensor:  # [C, 3] camera centres in world space
        R = self.viewmats[:, :3, :3]
        t = self.viewmats[:, :3, 3]
        return -(R.transpose(1, 2) @ t[:, :, None])[..., 0]


def orbit_position(azimuth_deg: Tensor, elevation_deg: Tensor, distance: Tensor) -> Tensor:
    """Camera centre [..., 3] for the orbit convention above (azimuth 0 on -Y, 90 on +X)."""
    az = torch.deg2rad(azimuth_deg)
    el = torch.deg2rad(elevation_deg)
    return torch.stack(
        [
            distance * torch.cos(el) * torch.sin(az),
            -distance * torch.cos(el) * torch.cos(az),
            distance * torch.sin(el),
        ],
        dim=-1,
    )


def look_at(eye: Tensor, target: Tensor | None = None, up: Tensor | None = None) -> Tensor:
    """World-to-camera matrices [C, 4, 4] (OpenCV axes) for cameras at ``eye`` [C, 3]."""
    eye = eye.reshape(-1, 3)
    dtype, device = eye.dtype, eye.device
    target = torch.zeros(3, dtype=dtype, device=device) if target is None else target
    up = torch.tensor([0.0, 0.0, 1.0], dtype=dtype, device=device) if up is None else up
    forward = torch.nn.functional.normalize(target - eye, dim=-1)  # camera +z
    right = torch.cross(forward, up.expand_as(forward), dim=-1)
    # Straight up or down: any right vector perpendicular to forward will do.
    degenerate = right.norm(dim=-1) < 1e-6
    if degenerate.any():
        alt = torch.tensor([0.0, 1.0, 0.0], dtype=dtype, device=device).expand_as(forward)
        right = torch.where(degenerate[:, None], torch.cross(forward, alt, dim=-1), right)
    right = torch.nn.functional.normalize(right, dim=-1)  # camera +x
    down = torch.cross(forward, right, dim=-1)  # camera +y (image rows grow downwards)
    R = torch.stack([right, down, forward], dim=1)  # rows: camera axes in world coordinates
    viewmats = torch.zeros(eye.shape[0], 4, 4, dtype=dtype, device=device)
    viewmats[:, :3, :3] = R
    viewmats[:, :3, 3] = -(R @ eye[:, :, None])[..., 0]
    viewmats[:, 3, 3] = 1.0
    return viewmats


def intrinsics(fov_y_deg: Tensor, width: int, height: int) -> Tensor:
    """Pinhole intrinsics [C, 3, 3] for a vertical field of view in degrees."""
    fov_y_deg = torch.as_tensor(fov_y_deg, dtype=torch.float32).reshape(-1)
    focal = 0.5 * height / torch.tan(torch.deg2rad(fov_y_deg) / 2)
    Ks = torch.zeros(fov_y_deg.shape[0], 3, 3)
    Ks[:, 0, 0] = focal
    Ks[:, 1, 1] = focal
    Ks[:, 0, 2] = width / 2
    Ks[:, 1, 2] = height / 2
    Ks[:, 2, 2] = 1.0
    return Ks


def orbit_angles(viewmats: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Azimuth, elevation (degrees) and distance of camera centres about the origin."""
    R = viewmats[:, :3, :3]
    pos = -(R.transpose(1, 2) @ viewmats[:, :3, 3:])[..., 0]
    dist = pos.norm(dim=-1)
    el = torch.rad2deg(torch.asin((pos[:, 2] / dist.clamp_min(1e-12)).clamp(-1, 1)))
    az = torch.rad2deg(torch.atan2(pos[:, 0], -pos[:, 1])) % 360.0
    return az, el, dist


def orbit_cameras(
    azimuth_deg, elevation_deg, distance, fov_y_deg, width: int, height: int
) -> Cameras:
    """Cameras on an orbit looking at the origin; each argument is a scalar or a [C] sequence."""
    az, el, dist, fov = torch.broadcast_tensors(
        *(
            torch.as_tensor(v, dtype=torch.float32).reshape(-1)
            for v in (azimuth_deg, elevation_deg, distance, fov_y_deg)
        )
    )
    viewmats = look_at(orbit_position(az, el, dist))
    return Cameras(viewmats, intrinsics(fov, width, height), width, height, az % 360.0, el, dist)


@dataclass
class CameraConfig:
    """Random orbit cameras for training."""

    distance: tuple[float, float] = (2.5, 2.5)
    """Camera distance range in scene units (object fits the unit ball). 2.5 with fov 49 deg frames
    the ball with margin; threestudio's gaussian-splatting configs sample camera_distance_range
    [2.5, 2.5] (fovy 40-70 deg)."""
    elevation_deg: tuple[float, float] = (-10.0, 60.0)
    """Elevation range; threestudio's uncond/random-camera default is (-10, 90); the top is cut to
    60 so the ring of held-out cameras at 20 deg is well covered."""
    azimuth_deg: tuple[float, float] = (0.0, 360.0)
    """Azimuth range; full circle as in every peer (threestudio [-180, 180])."""
    fov_y_deg: tuple[float, float] = (49.0, 49.0)
    """Vertical field of view; 49.1 deg is DreamGaussian's default (fovy 49.1)."""
    batch_size: int = 4
    """Views per step; threestudio's gaussian configs use 4."""


def sample_cameras(
    cfg: CameraConfig, width: int, height: int, generator: torch.Generator, n: int | None = None
) -> Cameras:
    """Draw ``n`` (default ``cfg.batch_size``) random orbit cameras from ``cfg``'s ranges."""
    n = cfg.batch_size if n is None else n

    def uniform(lo_hi: tuple[float, float]) -> Tensor:
        lo, hi = lo_hi
        return lo + (hi - lo) * torch.rand(n, generator=generator)

    # Azimuth stratified over the batch so the views of one step see different sides.
    lo, hi = cfg.azimuth_deg
    offset = torch.rand(1, generator=generator)
    az = lo + (hi - lo) * (
        (torch.arange(n) + offset + 0.5 * torch.rand(n, generator=generator)) / n % 1.0
    )
    # Elevation uniform on the sphere cap between the bounds (not uniform in angle), so the
    # poles are not oversampled.
    sin_lo, sin_hi = (math.sin(math.radians(e)) for e in cfg.elevation_deg)
    el = torch.rad2deg(torch.asin(sin_lo + (sin_hi - sin_lo) * torch.rand(n, generator=generator)))
    return orbit_cameras(az, el, uniform(cfg.distance), uniform(cfg.fov_y_deg), width, height)


def heldout_cameras(
    width: int,
    height: int,
    distance: float = 2.5,
    fov_y_deg: float = 49.0,
    n: int = 8,
    elevation_deg: float = 20.0,
) -> Cameras:
    """The evaluation ring: elevation 20 deg, azimuths 22.5 + k * 360/n deg."""
    az = 22.5 + torch.arange(n, dtype=torch.float32) * (360.0 / n)
    return orbit_cameras(az, elevation_deg, distance, fov_y_deg, width, height)
