"""Codec: round trips of every message type, and every validation failure as a ProtocolError."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest
from protocol_samples import all_samples, samples

from stabledreamer_protocol import (
    DEFAULT_LIMITS,
    MESSAGE_TYPES,
    ErrorCode,
    Hello,
    Preview,
    Progress,
    ProtocolError,
    Submit,
    decode,
    encode,
)
from stabledreamer_protocol.codec import signature


def as_bytes(frames) -> list[bytes]:
    return [bytes(f) for f in frames]


def header_of(frames) -> dict:
    return json.loads(bytes(frames[0]))


def with_header(frames, header: dict) -> list[bytes]:
    return [json.dumps(header).encode(), *as_bytes(frames[1:])]


def assert_same(a, b) -> None:
    assert type(a) is type(b)
    assert (a.id, a.re, a.job) == (b.id, b.re, b.job)
    assert json.dumps(a.body(), sort_keys=True) == json.dumps(b.body(), sort_keys=True)
    assert a.arrays().keys() == b.arrays().keys()
    for k, v in a.arrays().items():
        w = b.arrays()[k]
        assert w.dtype == np.asarray(v).dtype and w.shape == np.asarray(v).shape
        np.testing.assert_array_equal(w, v)


def test_samples_cover_every_type():
    assert {s.TYPE for s in all_samples()} == set(MESSAGE_TYPES)


@pytest.mark.parametrize("msg", all_samples(), ids=lambda s: s.TYPE)
def test_round_trip(msg):
    frames = encode(msg)
    assert len(frames) == 1 + len(msg.arrays())
    back = decode(as_bytes(frames))
    assert_same(msg, back)


@pytest.mark.parametrize("msg", all_samples(), ids=lambda s: s.TYPE)
def test_signed_round_trip_and_tampering(msg):
    key = b"k" * 32
    frames = as_bytes(encode(msg, key=key))
    assert len(frames[-1]) == 32
    assert_same(msg, decode(frames, key=key))
    for i in range(len(frames) - 1):  # any changed frame, header or buffer, is caught
        bad = list(frames)
        bad[i] = bad[i] + b"x"
        with pytest.raises(ProtocolError) as e:
            decode(bad, key=key)
        assert e.value.code == ErrorCode.BAD_SIGNATURE
    with pytest.raises(ProtocolError) as e:
        decode(frames, key=b"other key")
    assert e.value.code == ErrorCode.BAD_SIGNATURE
    with pytest.raises(ProtocolError):
        decode(frames[:-1], key=key)  # unsigned message to a signing receiver


def test_decoded_arrays_are_zero_copy_views():
    msg = samples()[-6]  # the preview
    assert isinstance(msg, Preview)
    frames = as_bytes(encode(msg))
    back = decode(frames)
    assert not back.position.flags.writeable
    assert np.shares_memory(back.position, np.frombuffer(frames[1], np.uint8))


def test_non_finite_numbers_are_sent_as_null():
    msg = Progress(job="j", losses={"sds": math.nan, "ok": 1.5}, eta_s=math.inf)
    back = decode(encode(msg))
    assert back.losses == {"sds": None, "ok": 1.5} and back.eta_s is None


def test_big_endian_and_non_contiguous_arrays_are_normalised():
    pts = np.arange(60, dtype=">f4").reshape(20, 3)[::2]
    back = decode(encode(Submit(job="j", prompt="p", init_points=pts)))
    assert back.init_points.dtype == np.dtype("<f4")
    np.testing.assert_array_equal(back.init_points, pts)


def test_encode_refuses_what_decode_would_reject():
    with pytest.raises(ProtocolError) as e:
        encode(Submit(job="j", prompt="x" * (DEFAULT_LIMITS.max_prompt_chars + 1)))
    assert e.value.code == ErrorCode.PROMPT_TOO_LONG
    with pytest.raises(TypeError):
        encode(Submit(job="j", prompt="p", init_points=np.zeros((2, 3), dtype=object)))


def test_submit_digest_identifies_identical_requests():
    a, b = samples()[4], samples()[4]
    assert a.digest() == b.digest()
    assert a.digest() == decode(encode(a)).digest()
    assert replace(a, seed=43).digest() != a.digest()


def test_error_of_another_version_is_still_readable():
    frames = encode(samples()[-1])
    h = header_of(frames)
    h["v"] = 99
    assert decode(with_header(frames, h)).code == "job_failed"


# --- rejects ----------------------------------------------------------------------------------

PREVIEW = samples()[-6]


def rejected(frames, code, **kw):
    with pytest.raises(ProtocolError) as e:
        decode(frames, **kw)
    assert e.value.code == code, e.value
    assert e.value.message
    return e.value


def test_reject_wrong_frame_count():
    frames = as_bytes(encode(PREVIEW))
    rejected([], ErrorCode.FRAME_COUNT)
    rejected(frames[:2], ErrorCode.FRAME_COUNT)  # one buffer missing
    rejected([*frames, b"extra"], ErrorCode.FRAME_COUNT)
    rejected([frames[0]] + [b""] * 20, ErrorCode.FRAME_COUNT)


def test_reject_non_bytes_frame():
    rejected([None], ErrorCode.BAD_FRAME)
    rejected(["text"], ErrorCode.BAD_FRAME)


def test_reject_bad_json():
    rejected([b"{not json"], ErrorCode.BAD_JSON)
    rejected([b"\xff\xfe{}"], ErrorCode.BAD_JSON)
    rejected([b'{"v": NaN}'], ErrorCode.BAD_JSON)
    rejected([b'{"v": 1, "v": 1}'], ErrorCode.BAD_JSON)
    rejected([b"[" * 20000 + b"]" * 20000], ErrorCode.BAD_JSON)


def test_reject_non_object_header():
    for text in (b"[]", b"1", b'"hello"', b"null"):
        rejected([text], ErrorCode.BAD_HEADER)


def test_reject_wrong_version_with_reference():
    frames = encode(Hello())
    h = header_of(frames)
    for v in (2, 0, "1", None, True, 1.0):
        h["v"] = v
        err = rejected(with_header(frames, h), ErrorCode.VERSION_MISMATCH)
        assert err.ref == h["id"]  # the server can address its error reply


def test_reject_unknown_and_unexpected_type():
    frames = encode(Hello())
    h = header_of(frames)
    h["type"] = "format_disk"
    rejected(with_header(frames, h), ErrorCode.UNKNOWN_TYPE)
    rejected(as_bytes(encode(PREVIEW)), ErrorCode.UNEXPECTED_TYPE, direction="command")
    rejected(as_bytes(encode(samples()[4])), ErrorCode.UNEXPECTED_TYPE, direction="event")


def test_reject_bad_ids():
    frames = encode(samples()[7])  # cancel: needs a job
    for key, value in (("id", "../etc"), ("id", ""), ("id", "x" * 65), ("job", 5), ("re", [])):
        h = header_of(frames)
        h[key] = value
        rejected(with_header(frames, h), ErrorCode.BAD_HEADER)
    h = header_of(frames)
    del h["job"]
    rejected(with_header(frames, h), ErrorCode.BAD_HEADER)


def test_reject_lying_buffer_length():
    frames = as_bytes(encode(PREVIEW))
    rejected([frames[0], frames[1][:-4], frames[2]], ErrorCode.BUFFER_LENGTH)
    rejected([frames[0], frames[1] + b"\0" * 12, frames[2]], ErrorCode.BUFFER_LENGTH)
    h = header_of(frames)
    h["buffers"][0]["nbytes"] -= 12  # descriptor inconsistent with its own shape
    rejected(with_header(frames, h), ErrorCode.BAD_DESCRIPTOR)


def test_reject_huge_declared_shape():
    frames = encode(PREVIEW)
    h = header_of(frames)
    h["buffers"][0]["shape"] = [2**62, 3]
    h["buffers"][0]["nbytes"] = 2**62 * 12
    rejected(with_header(frames, h), ErrorCode.BAD_SHAPE)
    h["buffers"][0]["shape"] = [10**400, 3]
    rejected(with_header(frames, h), ErrorCode.BAD_SHAPE)
    h["buffers"][0]["shape"] = [1, 1, 1, 1, 1, 257 * 3]
    rejected(with_header(frames, h), ErrorCode.BAD_SHAPE)
    h["buffers"][0]["shape"] = [-257, -3]
    rejected(with_header(frames, h), ErrorCode.BAD_SHAPE)


def test_reject_bad_dtypes():
    frames = encode(PREVIEW)
    for dtype in ("O", "|O", "object", "<U4", "|V12", ">f4", "<c8", "float32", 5, None):
        h = header_of(frames)
        h["buffers"][0]["dtype"] = dtype
        rejected(with_header(frames, h), ErrorCode.BAD_DTYPE)
    h = header_of(frames)  # allowed dtype, same size, but not what a preview carries
    h["buffers"][0]["dtype"] = "<i4"
    rejected(with_header(frames, h), ErrorCode.BAD_DTYPE)


def test_reject_wrong_buffer_names_and_shapes():
    frames = encode(PREVIEW)
    h = header_of(frames)
    h["buffers"][1]["name"] = "position"
    rejected(with_header(frames, h), ErrorCode.BAD_BUFFER)
    h = header_of(frames)
    h["buffers"][1]["name"] = "payload"
    rejected(with_header(frames, h), ErrorCode.BAD_BUFFER)
    h = header_of(frames)
    h["buffers"][1]["shape"] = [257 * 11]
    rejected(with_header(frames, h), ErrorCode.BAD_SHAPE)
    rejected([json.dumps({**header_of(frames), "buffers": []}).encode()], ErrorCode.BAD_BUFFER)


def test_reject_header_too_large():
    rejected([b" " * (DEFAULT_LIMITS.max_header_bytes + 1)], ErrorCode.HEADER_TOO_LARGE)
    small = replace(DEFAULT_LIMITS, max_message_bytes=1000)
    rejected(as_bytes(encode(PREVIEW)), ErrorCode.TOO_LARGE, limits=small)


def test_reject_bad_fields():
    def body_reject(msg, code=ErrorCode.BAD_FIELD, **changes):
        frames = encode(msg)
        h = header_of(frames)
        h["body"].update(changes)
        return rejected(with_header(frames, h), code)

    sub = samples()[4]
    body_reject(sub, ErrorCode.PROMPT_TOO_LONG, prompt="x" * 5000)
    body_reject(sub, prompt=7)
    body_reject(sub, prompt="   ", target=None, init_colors=None)
    body_reject(sub, seed=-1)
    body_reject(sub, seed=True)
    body_reject(sub, seed=1.5)
    body_reject(sub, overrides=[1])
    body_reject(sub, target={"format": "exe"})
    body_reject(sub, preview_points=10**9)
    body_reject(samples()[14], state="exploded")  # job_state
    body_reject(samples()[16], losses={"sds": "high"})  # progress
    body_reject(samples()[13], file="../../etc/passwd")  # fetch
    body_reject(samples()[17], ErrorCode.BAD_FIELD, layout="gs99")  # preview
    body_reject(samples()[19], files=[{"name": "a", "size": 1, "sha256": "zz"}])
    body_reject(samples()[19], chunk_size=0)
    err = body_reject(sub, seed="x")
    assert err.ref == sub.id and err.job == sub.job
    frames = encode(sub)
    h = header_of(frames)
    h["body"] = [1, 2]
    rejected(with_header(frames, h), ErrorCode.BAD_HEADER)


def test_reject_inconsistent_buffers():
    sub = samples()[5]  # target arrays
    frames = as_bytes(encode(sub))
    h = header_of(frames)
    i = [d["name"] for d in h["buffers"]].index("target_faces")
    faces = np.frombuffer(frames[1 + i], np.int32).copy()
    faces[0] = 99  # index past the 8 vertices
    frames[1 + i] = faces.tobytes()
    rejected(frames, ErrorCode.BAD_BUFFER)
    cap = replace(DEFAULT_LIMITS, max_preview_points=100)
    rejected(as_bytes(encode(PREVIEW)), ErrorCode.TOO_MANY_POINTS, limits=cap)


def test_signature_covers_frame_boundaries():
    key = b"key"
    assert signature(key, [b"ab", b"c"]) != signature(key, [b"a", b"bc"])


def test_workers_are_optional_and_checked():
    """``workers`` (since 1.4): absent from older peers (None), every entry checked."""
    from stabledreamer_protocol.messages import Hello, JobState

    assert decode(encode(Hello(software="old"))).workers is None
    assert decode(encode(JobState(job="j"))).workers is None
    for bad in ({"device": "cpu", "state": "sleeping"}, {"state": "idle"},
                {"device": "cpu", "job": "../x"}, {"device": "cpu", "loads": -1}):  # fmt: skip
        msg = Hello(software="x")
        frames = encode(msg)
        header = json.loads(bytes(frames[0]))
        header["body"]["workers"] = [bad]
        with pytest.raises(ProtocolError) as e:
            decode([json.dumps(header).encode(), *frames[1:]])
        assert e.value.code == "bad_field" and "workers[0]" in str(e.value), bad
