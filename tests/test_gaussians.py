"""Gaussian initialisations: ball, point cloud, mesh surface."""

import pytest
import torch
import trimesh

from stabledreamer import gaussians as G


def test_ball_init_layout_and_values():
    cfg = G.InitConfig(num_points=2000, radius=0.5, opacity=0.1, sh_degree=1)
    g = G.init_ball(cfg, torch.Generator().manual_seed(0))
    assert g["means"].shape == (2000, 3) and g["quats"].shape == (2000, 4)
    assert g["sh0"].shape == (2000, 1, 3) and g["shN"].shape == (2000, 3, 3)
    assert g["means"].norm(dim=-1).max() <= 0.5 + 1e-6
    assert g["means"].norm(dim=-1).median() > 0.3  # uniform in volume, not clumped at the centre
    act = G.activated(g)
    torch.testing.assert_close(act["opacities"], torch.full((2000,), 0.1))
    torch.testing.assert_close(act["rgb"], torch.full((2000, 3), 0.5))
    assert G.sh_degree_of(g) == 1


def test_points_init_keeps_colours_and_uses_spacing():
    pts = torch.rand(500, 3) * 0.01  # dense: the scale follows the nearest-neighbour spacing
    cols = torch.rand(500, 3)
    g = G.from_points(pts, cols, G.InitConfig(scale=0.02))
    torch.testing.assert_close(G.activated(g)["rgb"], cols, atol=1e-6, rtol=0)
    assert torch.exp(g["scales"]).max() < 0.005
    with pytest.raises(ValueError, match="zero points"):
        G.from_points(torch.zeros(0, 3))


def test_mesh_surface_init():
    box = trimesh.creation.box(extents=(1.0, 1.0, 1.0))
    g = G.init_from_mesh(box, G.InitConfig(num_points=1000))
    # every point lies on the surface of the unit cube: max |coordinate| == 0.5
    assert torch.allclose(g["means"].abs().max(dim=-1).values, torch.tensor(0.5), atol=1e-4)
    assert g["means"].shape[0] >= 500
    with pytest.raises(ValueError, match="no faces"):
        G.init_from_mesh(trimesh.Trimesh(), G.InitConfig())
