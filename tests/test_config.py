"""Configs: a dict round trip, presets, unknown keys refused."""

import json

import pytest

from stabledreamer.config import RunConfig, from_dict, to_dict
from stabledreamer.presets import PRESETS, get_preset


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_round_trips_through_json(name):
    cfg = get_preset(name)
    cfg.validate()
    back = from_dict(RunConfig, json.loads(json.dumps(to_dict(cfg))))
    assert back == cfg


def test_unknown_key_and_bad_values():
    d = to_dict(get_preset("smoke"))
    d["stages"][0]["stepz"] = 3
    with pytest.raises(ValueError, match="unknown settings"):
        from_dict(RunConfig, d)
    cfg = get_preset("smoke")
    cfg.stages[0].steps = 0
    with pytest.raises(ValueError, match="steps must be positive"):
        cfg.validate()
    with pytest.raises(ValueError, match="unknown preset"):
        get_preset("nope")
