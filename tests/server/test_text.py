"""Text that cannot be encoded, or that is large once escaped: refused at the edge with one
clear error, and never able to break a reply or the log for anyone."""

from __future__ import annotations

import itertools
import json

import pytest

from stabledreamer.server.logbuffer import LogBuffer
from stabledreamer_protocol import DEFAULT_LIMITS, Error, JobState, Logs, codec, encode
from stabledreamer_protocol.errors import ProtocolError

LONE = ["\ud800", "\udfff", "\udc00\ud800", "a\ud83d", "\ude00b"]
"""Lone or reversed surrogates: not Unicode text."""
NASTY = [
    "\U0001f600" * 4000,
    "\U0001f468\u200d\U0001f469\u200d\U0001f467" * 500,
    '"' * 4000,
    "\\" * 4000,
    "\x00\x01\x1f" * 1333,
    "\u202e\u0301" * 2000,
    "\ufffd\uffff\U0010ffff" * 1000,
]
"""Valid text that is long, or grows when escaped as JSON (6 bytes per control character)."""


def raw_header(body: dict) -> bytes:
    header = {"v": 1, "type": "submit", "id": "r1", "job": "j1", "body": body, "buffers": []}
    return json.dumps(header, ensure_ascii=True).encode()  # lone surrogates become \\udXXX escapes


SUBMIT_TEXT_FIELDS = [
    lambda t: {"prompt": t},
    lambda t: {"prompt": "x", "negative": t},
    lambda t: {"target": {"format": "demo", "name": t}},
    lambda t: {"prompt": "x", "preset": t},
    lambda t: {"prompt": "x", "overrides": {t: 1}},
    lambda t: {"prompt": "x", "overrides": {"a": [t]}},
]


@pytest.mark.parametrize(("make", "text"), list(itertools.product(SUBMIT_TEXT_FIELDS, LONE)))
def test_lone_surrogates_are_refused_at_the_edge(make, text):
    with pytest.raises(ProtocolError) as e:
        codec.decode([raw_header(make(text))], direction="command")
    assert e.value.code == "bad_json" and "surrogate" in e.value.message
    assert e.value.ref == "r1"  # the refusal reaches the sender's request


@pytest.mark.parametrize("text", ["\U0001f600", "a\ud83d\ude00b", "\\ud800 as plain text"])
def test_valid_text_and_surrogate_pairs_pass(text):
    msg = codec.decode([raw_header({"prompt": text})], direction="command")
    assert msg.prompt == text.encode("utf-16", "surrogatepass").decode("utf-16")


@pytest.mark.parametrize("text", LONE + NASTY)
def test_every_reply_encodes_whatever_text_got_in(text):
    for msg in (
        JobState(job="j", state="failed", message=text[:4000]),
        Error(job="j", code="job_failed", message=text[:4000]),
    ):
        back = codec.decode(encode(msg))
        assert "\ud800" not in back.message and len(back.message) == len(text[:4000])


@pytest.mark.parametrize("max_lines", [1, 7, 200, 1000])
def test_the_log_always_encodes(max_lines):
    buf = LogBuffer(capacity=3000)
    for i, text in enumerate(itertools.islice(itertools.cycle(LONE + NASTY), 2500)):
        buf.add(f"12:00:00 INFO service: job j{i} queued: generate of {text}", job=f"j{i % 3}")
    budget = DEFAULT_LIMITS.max_header_bytes - 4096  # what the service allows
    for job in (None, "j0"):
        lines, cursor = buf.since(0, max_lines, job, budget)
        assert lines and cursor == 2500
        frames = encode(Logs(re="r", job=job, lines=lines, cursor=cursor))
        assert len(frames[0]) <= DEFAULT_LIMITS.max_header_bytes
