"""Camera conventions (docs/architecture.md): Z up, azimuth 0 on -Y, 90 on +X; OpenCV axes."""

import pytest
import torch

from stabledreamer.cameras import (
    CameraConfig,
    heldout_cameras,
    orbit_angles,
    orbit_cameras,
    sample_cameras,
)


def project(cams, p):
    pc = cams.viewmats[:, :3, :3] @ p + cams.viewmats[:, :3, 3]
    uv = (cams.Ks @ pc[..., None])[..., 0]
    return uv[:, :2] / uv[:, 2:], pc[:, 2]


def test_azimuth_convention():
    cams = orbit_cameras([0.0, 90.0, 180.0], 0.0, 2.5, 49.0, 64, 64)
    torch.testing.assert_close(
        cams.positions,
        torch.tensor([[0.0, -2.5, 0.0], [2.5, 0.0, 0.0], [0.0, 2.5, 0.0]]),
        atol=1e-5,
        rtol=0,
    )


def test_image_axes_front_view():
    cams = orbit_cameras(0.0, 0.0, 2.5, 49.0, 64, 48)
    uv, z = project(cams, torch.tensor([0.0, 0.0, 0.0]))
    torch.testing.assert_close(uv, torch.tensor([[32.0, 24.0]]))
    assert z.item() == pytest.approx(2.5)
    uv_up, _ = project(cams, torch.tensor([0.0, 0.0, 0.3]))  # +Z is up in the image
    uv_right, _ = project(cams, torch.tensor([0.3, 0.0, 0.0]))  # +X is right from the front
    assert uv_up[0, 1] < 24.0 and uv_right[0, 0] > 32.0


def test_elevation_and_angles_round_trip():
    cams = orbit_cameras([10.0, 200.0], [30.0, -5.0], [2.0, 3.0], 40.0, 32, 32)
    az, el, dist = orbit_angles(cams.viewmats)
    torch.testing.assert_close(az, torch.tensor([10.0, 200.0]), atol=1e-3, rtol=0)
    torch.testing.assert_close(el, torch.tensor([30.0, -5.0]), atol=1e-3, rtol=0)
    torch.testing.assert_close(dist, torch.tensor([2.0, 3.0]), atol=1e-4, rtol=0)
    top = orbit_cameras(0.0, 90.0, 2.0, 40.0, 32, 32)  # straight down must not be degenerate
    assert torch.isfinite(top.viewmats).all()


def test_field_of_view():
    cams = orbit_cameras(0.0, 0.0, 2.0, 90.0, 64, 64)
    uv, _ = project(cams, torch.tensor([0.0, 0.0, 2.0]))  # 45 deg up = the top edge
    assert uv[0, 1].item() == pytest.approx(0.0, abs=1e-3)


def test_sampling_ranges_and_heldout_ring():
    cfg = CameraConfig(distance=(2.0, 3.0), elevation_deg=(-10.0, 60.0), batch_size=4)
    gen = torch.Generator().manual_seed(0)
    cams = sample_cameras(cfg, 32, 32, gen, n=500)
    assert cams.distance.min() >= 2.0 and cams.distance.max() <= 3.0
    assert cams.elevation_deg.min() >= -10.001 and cams.elevation_deg.max() <= 60.001
    assert len(cams[:3]) == 3 and len(cams[5]) == 1
    ring = heldout_cameras(128, 128)
    torch.testing.assert_close(ring.azimuth_deg, 22.5 + 45.0 * torch.arange(8.0), atol=1e-3, rtol=0)
    torch.testing.assert_close(ring.elevation_deg, torch.full((8,), 20.0), atol=1e-3, rtol=0)
