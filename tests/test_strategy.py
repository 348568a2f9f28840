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
