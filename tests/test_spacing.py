"""The initial Gaussian scale's neighbour spacing, computed in blocks: the same as all at once."""

from __future__ import annotations

import pytest
import torch

from stabledreamer import gaussians as G


def naive(points: torch.Tensor, sample: int = 2048) -> float:
    idx = torch.randperm(points.shape[0], generator=torch.Generator().manual_seed(0))[:sample]
    d = torch.cdist(points[idx], points).topk(4, largest=False).values[:, 1:]
    return float(d.mean().clamp_min(1e-4))


@pytest.mark.parametrize(
    ("n", "block"),
    [(4, 3), (5, 3), (100, 3), (100, 1000), (2049, 100), (2049, 32_768), (40_000, 4096)],
)
def test_blocks_match(monkeypatch, n, block):
    monkeypatch.setattr(G, "SPACING_BLOCK", block)
    pts = torch.randn(n, 3, generator=torch.Generator().manual_seed(n))
    assert G._mean_spacing(pts) == pytest.approx(naive(pts), rel=1e-5)
