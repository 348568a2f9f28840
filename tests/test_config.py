"""Configs: a dict round trip, presets, and every setting checked once by ``from_dict``: unknown
keys, types, choices and ranges, for every leaf setting reachable from ``RunConfig`` (generated
from the dataclasses, so a new setting is covered, or fails here for want of a range)."""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from typing import Literal

import pytest

from stabledreamer.config import RunConfig, apply_overrides, from_dict, to_dict
from stabledreamer.config_space import RANGES
from stabledreamer.errors import ConfigError, StableDreamerError
from stabledreamer.presets import PRESETS, get_preset, resolve


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_round_trips_through_json(name):
    cfg = get_preset(name)
    cfg.validate()
    back = from_dict(RunConfig, json.loads(json.dumps(to_dict(cfg))))
    assert back == cfg
    assert resolve(name) == cfg  # the one path from a request to a config changes nothing


def test_unknown_key_and_bad_values():
    d = to_dict(get_preset("smoke"))
    d["stages"][0]["stepz"] = 3
    with pytest.raises(ConfigError, match=r"stages\.0\.stepz: unknown setting"):
        from_dict(RunConfig, d)
    with pytest.raises(ConfigError, match="stages.0.steps.*outside the range"):
        resolve("smoke", {"stages.0.steps": 0})
    with pytest.raises(ConfigError, match="unknown preset") as e:
        get_preset("nope")
    assert e.value.code == "unknown_preset" and isinstance(e.value, StableDreamerError)


def _leaves(cls, prefix="", owner=None):
    """(dotted key, Class.field id, type) of every leaf setting of a config dataclass."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp, key = hints[f.name], f"{prefix}{f.name}"
        if typing.get_origin(tp) in (typing.Union, type(int | None)):
            tp = next(a for a in typing.get_args(tp) if a is not type(None))
        if dataclasses.is_dataclass(tp):
            yield from _leaves(tp, key + ".")
        elif typing.get_origin(tp) is list:  # the stages
            (item,) = typing.get_args(tp)
            yield from _leaves(item, key + ".0.")
        else:
            yield key, f"{cls.__name__}.{f.name}", tp


LEAVES = list(_leaves(RunConfig))


def _numeric(tp):
    if tp in (int, float):
        return tp, None
    if typing.get_origin(tp) is tuple:
        args = typing.get_args(tp)
        if args and args[0] in (int, float):
            return args[0], (1 if Ellipsis in args else len(args))
    return None, None


def test_every_numeric_setting_has_a_range():
    missing = [fid for _, fid, tp in LEAVES if _numeric(tp)[0] and fid not in RANGES]
    assert not missing, f"add these to config_space.RANGES: {missing}"
    known = {fid for _, fid, _ in LEAVES}
    assert not set(RANGES) - known, "ranges of settings that no longer exist"


def _value(tp, n, v):
    return v if n is None else [v] * n


@pytest.mark.parametrize("key,fid,tp", [x for x in LEAVES if _numeric(x[2])[0]], ids=lambda x: x)
def test_numeric_settings_at_and_beyond_their_range(key, fid, tp):
    """At each bound a setting is accepted by from_dict; just beyond it, refused with the key and
    the range; a wrong type, a non-finite number or a bool is refused too."""
    kind, n = _numeric(tp)
    r = RANGES[fid]
    step = 1 if kind is int else max(abs(r.hi), abs(r.lo), 1.0) * 1e-6
    for bound in (r.lo, r.hi):
        data = to_dict(get_preset("smoke"))
        apply_overrides(data, {key: _value(tp, n, kind(bound))})
        try:
            from_dict(RunConfig, data)
        except ConfigError as e:  # a check across settings may refuse it, never the range
            assert "outside the range" not in str(e), str(e)
    for beyond in (r.lo - step, r.hi + step):
        data = to_dict(get_preset("smoke"))
        apply_overrides(data, {key: _value(tp, n, kind(beyond))})
        with pytest.raises(ConfigError) as e:
            from_dict(RunConfig, data)
        assert key.split(".")[-1] in str(e.value) and str(r) in str(e.value), str(e.value)
    for bad in ("1", True, None, math.nan, math.inf, [1, 2, 3, 4, 5]):
        if bad is None and key.endswith("grad_clip"):
            continue  # an optional number: None means off
        data = to_dict(get_preset("smoke"))
        apply_overrides(data, {key: bad if n is None else _value(tp, n, bad)})
        with pytest.raises(ConfigError, match=key.split(".")[-1]):
            from_dict(RunConfig, data)


@pytest.mark.parametrize("key,fid,tp", [x for x in LEAVES if not _numeric(x[2])[0]], ids=str)
def test_other_settings_are_typed(key, fid, tp):
    """Choices refuse any other string; booleans refuse numbers; strings refuse numbers and
    overlong text."""
    data = to_dict(get_preset("smoke"))
    if typing.get_origin(tp) is Literal:
        for choice in typing.get_args(tp):
            apply_overrides(data, {key: choice})
            from_dict(RunConfig, data)
        bads = ["no-such-choice", 3]
    elif tp is bool:
        bads = [1, "yes"]
    elif tp is str:
        bads = [3, "x" * 5000]
    else:
        pytest.fail(f"{key}: a setting of type {tp} needs a test")
    for bad in bads:
        data = to_dict(get_preset("smoke"))
        apply_overrides(data, {key: bad})
        with pytest.raises(ConfigError, match=key.split(".")[-1]):
            from_dict(RunConfig, data)


def test_overrides_address_stages_by_name_and_refuse_groups_and_forbidden_keys():
    cfg = resolve("standard", {"detail.steps": 7, "geometry.noise.schedule": "linear"})
    assert cfg.stages[1].steps == 7 and cfg.stages[0].noise.schedule == "linear"
    for bad in ({"camera": 1}, {"stages.9.steps": 1}, {"nope": 1}, {"a..b": 1}, {3: 1}):
        with pytest.raises(ConfigError):
            resolve("standard", bad)
    with pytest.raises(ConfigError, match="not yours"):
        resolve(
            "standard", {"deepfloyd_if.model": "x"}, forbidden={"deepfloyd_if.model": "not yours"}
        )


def test_threads_beyond_the_machine_are_refused(monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    with pytest.raises(ConfigError, match="threads: 3 is more than this machine's 2 CPUs"):
        resolve("smoke", {"threads": 3})
    assert resolve("smoke", {"threads": 2}).threads == 2
