"""The standard 3DGS .ply layout: round trip, property order, bad files."""

import numpy as np
import pytest
import torch
from plyfile import PlyData, PlyElement

from stabledreamer import gaussians as G
from stabledreamer.ply import PlyFormatError, load_ply, save_ply


@pytest.mark.parametrize("degree", [0, 2])
def test_round_trip(tmp_path, degree):
    gen = torch.Generator().manual_seed(0)
    g = G.init_ball(G.InitConfig(num_points=300, sh_degree=degree), gen)
    g["shN"] = torch.randn(g["shN"].shape, generator=gen)
    g["quats"] = torch.randn(300, 4, generator=gen)
    g["scales"] = torch.randn(300, 3, generator=gen)
    save_ply(g, tmp_path / "g.ply")
    back = load_ply(tmp_path / "g.ply")
    for k in G.KEYS:
        torch.testing.assert_close(back[k], g[k])


def test_layout_is_the_reference_one(tmp_path):
    g = G.init_ball(G.InitConfig(num_points=10, sh_degree=1), torch.Generator().manual_seed(0))
    g["shN"] = torch.arange(10 * 3 * 3, dtype=torch.float32).reshape(10, 3, 3)
    save_ply(g, tmp_path / "g.ply")
    v = PlyData.read(str(tmp_path / "g.ply"))["vertex"]
    names = list(v.data.dtype.names)
    assert names[:9] == ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
    assert names[9:18] == [f"f_rest_{i}" for i in range(9)]
    assert names[18:] == [
        "opacity",
        "scale_0",
        "scale_1",
        "scale_2",
        "rot_0",
        "rot_1",
        "rot_2",
        "rot_3",
    ]
    # channel-major f_rest: the first 3 are the red channel of coefficients 1..3
    np.testing.assert_allclose([v["f_rest_0"][0], v["f_rest_1"][0], v["f_rest_2"][0]], [0, 3, 6])
    assert all(v.data.dtype[n] == np.float32 for n in names)


def test_not_a_gaussian_file(tmp_path):
    pts = np.zeros(3, dtype=[("x", "f4"), ("y", "f4"), ("z", "f4")])
    PlyData([PlyElement.describe(pts, "vertex")]).write(str(tmp_path / "pc.ply"))
    with pytest.raises(PlyFormatError, match="missing 3DGS properties"):
        load_ply(tmp_path / "pc.ply")
    (tmp_path / "junk.ply").write_bytes(b"not a ply at all")
    with pytest.raises(PlyFormatError, match="not a readable"):
        load_ply(tmp_path / "junk.ply")
    with pytest.raises(PlyFormatError, match="no such file"):
        load_ply(tmp_path / "missing.ply")


def test_write_is_atomic(tmp_path, monkeypatch):
    g = G.init_ball(G.InitConfig(num_points=10), torch.Generator().manual_seed(0))
    save_ply(g, tmp_path / "g.ply")
    before = (tmp_path / "g.ply").read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(PlyData, "write", boom)
    with pytest.raises(OSError):
        save_ply(G.init_ball(G.InitConfig(num_points=20), torch.Generator()), tmp_path / "g.ply")
    assert (tmp_path / "g.ply").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["g.ply"]


def test_written_files_get_normal_permissions(tmp_path):
    g = G.init_ball(G.InitConfig(num_points=10), torch.Generator().manual_seed(0))
    save_ply(g, tmp_path / "g.ply")
    mode = (tmp_path / "g.ply").stat().st_mode & 0o777
    assert mode & 0o044  # readable by others, as with open(); mkstemp alone would give 0600
