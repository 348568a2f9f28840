"""Messages <-> ZeroMQ multipart frames: one JSON header frame, then raw buffers, then (only when
an HMAC key is configured) one 32-byte signature frame. Never pickle.

Header (UTF-8 JSON object)::

    {"v": 1, "type": "preview", "id": "...", "re": "...", "job": "...",
     "body": {...}, "buffers": [{"name": "position", "dtype": "<f4", "shape": [N, 3],
                                 "nbytes": 12 * N}, ...]}

:func:`decode` checks, in this order and before any array is created: the frame count, the total
size and the header size, the signature, the JSON, the header schema (version, type, ids), each
buffer descriptor (allowed dtype, shape, ``nbytes == prod(shape) * itemsize``) against the actual
frame length, the type's buffer names and shapes, and finally the body's fields. Every failure is
a :class:`ProtocolError` with a code; nothing else escapes. Arrays are zero-copy, read-only views
of the received frames.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import re
import struct
from collections.abc import Sequence
from typing import Any

import numpy as np

from .errors import ErrorCode, ProtocolError
from .limits import DEFAULT_LIMITS, Limits
from .messages import BOTH, MESSAGE_TYPES, Error, Message, is_valid_id
from .version import PROTOCOL_MAJOR

ALLOWED_DTYPES = frozenset(
    {"|u1", "|i1", "<u2", "<i2", "<f2", "<u4", "<i4", "<f4", "<u8", "<i8", "<f8"}
)
"""Buffer dtypes, as numpy's ``dtype.str`` (little-endian, no objects, no records)."""
HEADER_KEYS = ("v", "type", "id", "re", "job", "body", "buffers")
SIGNATURE_BYTES = 32
_SIG_MAGIC = b"stabledreamer-hmac-v1"


def _frame_view(frame: Any, index: int) -> memoryview:
    buf = getattr(frame, "buffer", frame)  # zmq.Frame -> its memoryview
    try:
        view = memoryview(buf)
    except TypeError:
        raise ProtocolError(
            ErrorCode.BAD_FRAME, f"frame {index} is not bytes ({type(frame).__name__})"
        ) from None
    if view.ndim != 1 or view.format != "B":
        if not view.c_contiguous:
            raise ProtocolError(ErrorCode.BAD_FRAME, f"frame {index} is not contiguous")
        view = view.cast("B")
    return view


def signature(key: bytes, frames: Sequence[Any]) -> bytes:
    """HMAC-SHA256 over the frame count and every frame (header and buffers), each prefixed by
    its length, so neither content nor frame boundaries can change unnoticed."""
    mac = hmac.new(key, _SIG_MAGIC, hashlib.sha256)
    mac.update(struct.pack("<Q", len(frames)))
    for i, frame in enumerate(frames):
        view = _frame_view(frame, i)
        mac.update(struct.pack("<Q", view.nbytes))
        mac.update(view)
    return mac.digest()


def _finite(obj: Any) -> Any:
    """JSON-safe copy: non-finite floats become null, numpy scalars plain Python numbers."""
    if isinstance(obj, dict):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _wire_array(name: str, a: Any) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype.byteorder == ">":
        a = a.astype(a.dtype.newbyteorder("<"))
    a = np.ascontiguousarray(a)
    if a.dtype.str not in ALLOWED_DTYPES or a.ndim == 0:
        raise TypeError(f"buffer {name!r}: dtype {a.dtype.str} / ndim {a.ndim} cannot be sent")
    return a


def encode(
    msg: Message,
    *,
    key: bytes | None = None,
    check: bool = True,
    limits: Limits = DEFAULT_LIMITS,
) -> list:
    """Frames for ``socket.send_multipart(frames, copy=False)``: header bytes, then zero-copy
    memoryviews of the arrays, then the signature if ``key``. With ``check`` the frames go
    through :func:`decode` first, so a sender cannot emit what a receiver would reject (e.g. a
    prompt over the limit raises ``ProtocolError(prompt_too_long)`` here)."""
    descriptors, buffers = [], []
    for name, a in msg.arrays().items():
        a = _wire_array(name, a)
        descriptors.append(
            {"name": name, "dtype": a.dtype.str, "shape": list(a.shape), "nbytes": a.nbytes}
        )
        buffers.append(memoryview(a.reshape(-1).view(np.uint8)))
    header: dict[str, Any] = {"v": PROTOCOL_MAJOR, "type": msg.TYPE, "id": msg.id}
    if msg.re is not None:
        header["re"] = msg.re
    if msg.job is not None:
        header["job"] = msg.job
    header["body"] = _finite(msg.body())
    header["buffers"] = descriptors
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    try:
        raw = text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate that got in somewhere: never on the wire
        raw = clean_text(text).encode("utf-8")
    frames: list = [raw, *buffers]
    if check:
        decode(frames, limits=limits)
    if key is not None:
        frames.append(signature(key, frames))
    return frames


def _reject_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def _no_duplicates(pairs):
    out = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {k!r}")
        out[k] = v
    return out


def _parse_header(view: memoryview) -> dict:
    try:
        header = json.loads(
            str(view, "utf-8"),
            parse_constant=_reject_constant,
            object_pairs_hook=_no_duplicates,
        )
    except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError too
        raise ProtocolError(ErrorCode.BAD_JSON, f"header is not valid UTF-8 JSON: {e}") from None
    if not isinstance(header, dict):
        raise ProtocolError(ErrorCode.BAD_HEADER, "header must be a JSON object")
    return header


_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
"""Only a ``\\uD800``-``\\uDFFF`` escape can put a surrogate into decoded JSON (UTF-8 cannot)."""
_SURROGATE = re.compile("[\ud800-\udfff]")


def _has_lone_surrogate(obj: Any) -> bool:
    if isinstance(obj, str):
        return _SURROGATE.search(obj) is not None
    if isinstance(obj, dict):
        return any(_has_lone_surrogate(k) or _has_lone_surrogate(v) for k, v in obj.items())
    if isinstance(obj, list):
        return any(_has_lone_surrogate(v) for v in obj)
    return False


def clean_text(text: str) -> str:
    """``text`` with every lone surrogate (which UTF-8 cannot encode) replaced by U+FFFD."""
    return _SURROGATE.sub("\ufffd", text)


def decode(
    frames: Sequence[Any],
    *,
    limits: Limits = DEFAULT_LIMITS,
    key: bytes | None = None,
    direction: str | None = None,
) -> Message:
    """Validate and decode one multipart message (without any ROUTER identity frame).

    ``direction`` ("command" on the backend, "event" on a client) rejects types that only flow
    the other way (``unexpected_type``). Raises only :class:`ProtocolError`.
    """
    n_frames = len(frames)
    signed = key is not None
    n_buffers = n_frames - 1 - signed
    if not 0 <= n_buffers <= limits.max_buffers:
        raise ProtocolError(
            ErrorCode.FRAME_COUNT,
            f"{n_frames} frames; expected a header, at most {limits.max_buffers} buffers"
            + (" and a signature" if signed else ""),
        )
    views = [_frame_view(f, i) for i, f in enumerate(frames)]
    total = sum(v.nbytes for v in views)
    if total > limits.max_message_bytes:
        raise ProtocolError(
            ErrorCode.TOO_LARGE, f"message of {total} bytes (limit {limits.max_message_bytes})"
        )
    if views[0].nbytes > limits.max_header_bytes:
        raise ProtocolError(
            ErrorCode.HEADER_TOO_LARGE,
            f"header of {views[0].nbytes} bytes (limit {limits.max_header_bytes})",
        )
    if signed:
        expected = signature(key, views[:-1])
        if not hmac.compare_digest(expected, bytes(views[-1])):
            raise ProtocolError(ErrorCode.BAD_SIGNATURE, "message signature does not verify")
        views = views[:-1]

    header = _parse_header(views[0])
    # What the error reply can be addressed with, as soon as it is known to be well-formed.
    ref = header.get("id") if is_valid_id(header.get("id"), limits) else None
    job = header.get("job") if is_valid_id(header.get("job"), limits) else None

    def fail(code: str, message: str) -> ProtocolError:
        return ProtocolError(code, message, ref=ref, job=job)

    if _SURROGATE_ESCAPE.search(views[0]) and _has_lone_surrogate(header):
        raise ProtocolError(
            ErrorCode.BAD_JSON,
            "header text holds a lone UTF-16 surrogate escape (not Unicode text; I-JSON, "
            "RFC 7493, forbids it)",
            "Send text as valid Unicode; a surrogate escape must come in a high-low pair.",
            ref=ref,
            job=job,
        )

    mtype = header.get("type")
    version = header.get("v")
    if not isinstance(mtype, str) or len(mtype) > limits.max_name_chars:
        raise fail(ErrorCode.BAD_HEADER, "header.type must be a short string")
    # The error body is frozen across versions, so an error of any version is readable.
    if (not isinstance(version, int) or isinstance(version, bool)) or (
        version != PROTOCOL_MAJOR and mtype != Error.TYPE
    ):
        raise fail(
            ErrorCode.VERSION_MISMATCH,
            f"peer speaks protocol version {version!r:.20}, this side {PROTOCOL_MAJOR}",
        )
    cls = MESSAGE_TYPES.get(mtype)
    if cls is None:
        raise fail(ErrorCode.UNKNOWN_TYPE, f"unknown message type {mtype!r}")
    if direction is not None and cls.DIRECTION not in (direction, BOTH):
        raise fail(ErrorCode.UNEXPECTED_TYPE, f"{mtype!r} is not a {direction}")
    if ref is None:
        raise fail(
            ErrorCode.BAD_HEADER,
            f"header.id must be 1-{limits.max_id_chars} of A-Z a-z 0-9 _ . : -",
        )
    if "job" in header and header["job"] is not None and job is None:
        raise fail(ErrorCode.BAD_HEADER, "header.job is not a valid id")
    if cls.JOB == "required" and job is None:
        raise fail(ErrorCode.BAD_HEADER, f"{mtype!r} needs header.job")
    if cls.JOB == "none" and job is not None:
        raise fail(ErrorCode.BAD_HEADER, f"{mtype!r} takes no header.job")
    re_ = header.get("re")
    if re_ is not None and not is_valid_id(re_, limits):
        raise fail(ErrorCode.BAD_HEADER, "header.re is not a valid id")
    body = header.get("body", {})
    if not isinstance(body, dict):
        raise fail(ErrorCode.BAD_HEADER, "header.body must be an object")

    descriptors = header.get("buffers", [])
    if not isinstance(descriptors, list):
        raise fail(ErrorCode.BAD_HEADER, "header.buffers must be a list")
    if len(descriptors) != n_buffers:
        raise fail(
            ErrorCode.FRAME_COUNT,
            f"header describes {len(descriptors)} buffers, message has {n_buffers}",
        )
    specs = cls.BUFFERS
    layout = []
    for i, d in enumerate(descriptors):
        if not isinstance(d, dict):
            raise fail(ErrorCode.BAD_DESCRIPTOR, f"buffers[{i}] must be an object")
        name, dtype, shape, nbytes = (d.get(k) for k in ("name", "dtype", "shape", "nbytes"))
        if not isinstance(name, str) or name not in specs:
            raise fail(ErrorCode.BAD_BUFFER, f"{mtype!r} has no buffer {str(name)[:40]!r}")
        if any(name == other for other, _, _ in layout):
            raise fail(ErrorCode.BAD_BUFFER, f"buffer {name!r} sent twice")
        if not isinstance(dtype, str) or dtype not in ALLOWED_DTYPES:
            raise fail(ErrorCode.BAD_DTYPE, f"buffer {name!r}: dtype {str(dtype)[:20]!r} refused")
        if (
            not isinstance(shape, list)
            or len(shape) > limits.max_ndim
            or not shape
            or not all(
                isinstance(s, int) and not isinstance(s, bool) and 0 <= s <= total for s in shape
            )
        ):
            raise fail(ErrorCode.BAD_SHAPE, f"buffer {name!r}: bad shape {str(shape)[:60]}")
        if not isinstance(nbytes, int) or isinstance(nbytes, bool):
            raise fail(ErrorCode.BAD_DESCRIPTOR, f"buffer {name!r}: nbytes must be an integer")
        itemsize = np.dtype(dtype).itemsize
        if math.prod(shape) * itemsize != nbytes:
            raise fail(
                ErrorCode.BAD_DESCRIPTOR,
                f"buffer {name!r}: nbytes {nbytes} != prod({shape}) * {itemsize}",
            )
        if views[1 + i].nbytes != nbytes:
            raise fail(
                ErrorCode.BUFFER_LENGTH,
                f"buffer {name!r}: frame has {views[1 + i].nbytes} bytes, header says {nbytes}",
            )
        spec = specs[name]
        if dtype not in spec.dtypes:
            raise fail(ErrorCode.BAD_DTYPE, f"buffer {name!r} must be {' or '.join(spec.dtypes)}")
        if len(shape) != len(spec.shape) or any(
            want is not None and got != want for got, want in zip(shape, spec.shape, strict=True)
        ):
            pattern = ["N" if s is None else s for s in spec.shape]
            raise fail(ErrorCode.BAD_SHAPE, f"buffer {name!r} must have shape {pattern}")
        layout.append((name, dtype, shape))
    missing = [k for k, s in specs.items() if s.required and k not in {n for n, _, _ in layout}]
    if missing:
        raise fail(ErrorCode.BAD_BUFFER, f"{mtype!r} needs buffer(s) {', '.join(missing)}")

    arrays = {
        name: np.frombuffer(views[1 + i], dtype=dtype).reshape(shape)
        for i, (name, dtype, shape) in enumerate(layout)
    }
    try:
        return cls.from_wire(id=ref, re=re_, job=job, body=body, arrays=arrays, limits=limits)
    except ProtocolError:
        raise
    except Exception as e:  # a validation gap must not take the server down
        raise fail(ErrorCode.BAD_FIELD, f"invalid {mtype!r}: {type(e).__name__}: {e}") from None


# --- socket helpers ---------------------------------------------------------------------------


def send(socket, msg: Message, *, key: bytes | None = None, flags: int = 0, check=True) -> None:
    """Encode and send on a DEALER (client side)."""
    socket.send_multipart(encode(msg, key=key, check=check), flags, copy=False)


def recv(socket, *, limits=DEFAULT_LIMITS, key=None, direction=None, flags: int = 0) -> Message:
    """Receive and decode one message on a DEALER. Raises ProtocolError on a bad message."""
    frames = socket.recv_multipart(flags, copy=False)
    return decode(frames, limits=limits, key=key, direction=direction)


def send_routed(socket, identity: bytes, msg: Message, *, key=None, flags: int = 0) -> None:
    """Send on a ROUTER to the peer ``identity`` (no empty delimiter: peers are DEALERs)."""
    socket.send_multipart([identity, *encode(msg, key=key)], flags, copy=False)


def recv_routed(
    socket, *, limits=DEFAULT_LIMITS, key=None, direction="command", flags: int = 0
) -> tuple[bytes, Message | ProtocolError]:
    """Receive on a ROUTER: ``(identity, message)`` or ``(identity, ProtocolError)`` so the
    caller can answer a bad message with :meth:`Error.from_exception` and keep serving."""
    frames = socket.recv_multipart(flags, copy=False)
    identity = frames[0].bytes
    try:
        return identity, decode(frames[1:], limits=limits, key=key, direction=direction)
    except ProtocolError as e:
        return identity, e
