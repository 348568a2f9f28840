"""Densification strategy: gsplat's DefaultStrategy with a Gaussian-count cap."""

import torch

from stabledreamer import gaussians as G
from stabledreamer.config import StageConfig
from stabledreamer.optim.strategy import StrategyConfig, make_strategy
from stabledreamer.runs.trainer import make_optimizers


def _setup(n, cap):
    g = G.init_ball(G.InitConfig(num_points=n), torch.Generator().manual_seed(0))
    params = {k: torch.nn.Parameter(v) for k, v in g.items()}
    opts = make_optimizers(params, StageConfig())
    strat = make_strategy(StrategyConfig(max_gaussians=cap), stage_steps=1000)
    state = strat.initialize_state(scene_scale=1.0)
    state["count"] = torch.ones(n)
    return params, opts, strat, state


def test_growth_stops_at_the_cap_and_keeps_strongest():
    params, opts, strat, state = _setup(200, cap=260)
    grads = torch.linspace(0.0, 1.0, 200)
    state["grad2d"] = grads
    n_dupli, n_split = strat._grow_gs(params, opts, state, step=200)
    assert n_dupli + n_split == 60
    assert params["means"].shape[0] <= 260
    # the optimizer state followed the parameter
    assert opts["means"].param_groups[0]["params"][0] is params["means"]


def test_no_growth_when_full_and_normal_growth_below():
    params, opts, strat, state = _setup(100, cap=100)
    state["grad2d"] = torch.ones(100)
    assert strat._grow_gs(params, opts, state, step=200) == (0, 0)
    params, opts, strat, state = _setup(100, cap=10_000)
    state["grad2d"] = torch.cat([torch.ones(30), torch.zeros(70)])
    n_dupli, n_split = strat._grow_gs(params, opts, state, step=200)
    assert n_dupli + n_split == 30 and params["means"].shape[0] == 100 + n_dupli + n_split


def test_disabled_stage_has_no_strategy():
    assert make_strategy(StrategyConfig(enabled=False), 100) is None


def test_large_gaussians_are_pruned_from_the_first_refinement():
    """prune_scale3d takes effect (gsplat's own rule waits for its reset period, 1e9 here)."""
    params, opts, strat, state = _setup(100, cap=10_000)
    with torch.no_grad():
        params["opacities"].fill_(5.0)  # all opaque: only size can prune
        params["scales"][:7] = torch.log(torch.tensor(0.5))  # 0.5 > 0.1 x scene scale 1.0
    assert strat._prune_gs(params, opts, state, step=100) == 0  # not after start_step yet
    assert strat._prune_gs(params, opts, state, step=200) == 7
    assert params["means"].shape[0] == 93
    assert torch.exp(params["scales"]).max() <= 0.1


def test_size_pruning_waits_for_the_first_opacity_reset_when_resets_are_on():
    cfg = StrategyConfig(opacity_reset_every=500)
    assert make_strategy(cfg, 1000).prune_scale3d_after == 500  # 3DGS: after the first reset
    assert make_strategy(StrategyConfig(prune_scale3d_after=50), 1000).prune_scale3d_after == 50
    assert make_strategy(StrategyConfig(start_step=30), 1000).prune_scale3d_after == 30
