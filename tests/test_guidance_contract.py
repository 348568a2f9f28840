"""Every guidance class implements the whole contract of ``guidance.base.Guidance`` with its
signature (parameter names and order), so a change to the contract reaches every guidance."""

from __future__ import annotations

import inspect

import pytest

from stabledreamer.guidance.base import Guidance
from stabledreamer.guidance.deepfloyd_if import DeepFloydIFGuidance
from stabledreamer.guidance.example_prior import ExamplePriorGuidance
from stabledreamer.guidance.oracle import OracleGuidance
from stabledreamer.guidance.stable_diffusion import StableDiffusionGuidance

METHODS = [n for n, v in vars(Guidance).items() if callable(v) and not n.startswith("_")]


@pytest.mark.parametrize(
    "cls", [OracleGuidance, DeepFloydIFGuidance, StableDiffusionGuidance, ExamplePriorGuidance]
)
def test_guidance_classes_follow_the_contract(cls):
    assert {"encode", "decode", "alphas_sigmas", "predict_noise", "view_bank"} <= set(METHODS)
    for name in METHODS:
        want = list(inspect.signature(getattr(Guidance, name)).parameters)
        have = list(inspect.signature(getattr(cls, name)).parameters)
        assert have == want, f"{cls.__name__}.{name}{have}: the contract says {want}"
    assert isinstance(cls.name, str)
