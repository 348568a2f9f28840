"""Protocol 1.3's follow-up fields: what a submit with a parent may and may not carry."""

from __future__ import annotations

import json

import numpy as np
import pytest

from stabledreamer_protocol import ErrorCode, ListJobs, ProtocolError, Submit, decode, encode


def refused(body: dict, field: str, **kw) -> None:
    """A submit whose body gets ``body``'s fields is refused, naming ``field``."""
    frames = [bytes(f) for f in encode(Submit(job="j", prompt="x", **kw))]
    header = json.loads(frames[0])
    header["body"].update(body)
    with pytest.raises(ProtocolError) as e:
        decode([json.dumps(header).encode(), *frames[1:]])
    assert e.value.code == ErrorCode.BAD_FIELD and field in e.value.message, e.value


def test_follow_ups_round_trip_and_plain_submits_keep_their_digest():
    refine = decode(encode(Submit(job="r", prompt="x", parent="p", mode="refine")))
    assert (refine.parent, refine.mode, refine.steps) == ("p", "refine", None)
    cont = decode(encode(Submit(job="c", parent="p", mode="continue", steps=5)))
    assert (cont.prompt, cont.parent, cont.mode, cont.steps) == ("", "p", "continue", 5)
    plain = Submit(job="j", prompt="a chair", seed=1)
    assert "parent" not in plain.body() and "mode" not in plain.body()
    assert json.loads(bytes(encode(ListJobs())[0]))["body"] == {"offset": 0, "limit": None}


def test_follow_up_fields_are_checked():
    refused({"mode": "refine"}, "parent and mode")
    refused({"parent": "p"}, "parent and mode")
    refused({"parent": "p", "mode": "continue"}, "steps")
    refused({"parent": "p", "mode": "remix"}, "mode")
    refused({"parent": "../x", "mode": "refine"}, "parent")
    refused({"parent": "p", "mode": "continue", "steps": 0}, "steps")
    points = np.zeros((3, 3), np.float32)
    refused({"parent": "p", "mode": "refine"}, "no target", init_points=points)
    refused({"parent": "p", "mode": "refine", "target": {"format": "demo"}}, "no target")
    refused({"prompt": ""}, "prompt")  # without a parent a prompt is still needed
