"""Typed messages: one dataclass per message type, to and from the header's ``body`` and buffers.

Every message has the header fields ``id`` (unique per sender), ``re`` (the ``id`` of the request
it answers, if any) and ``job`` (where the type has one). The other fields form the JSON
``body``; arrays travel as raw buffers (see :mod:`stabledreamer_protocol.codec`).

Parsing (:meth:`Message.from_wire`) validates every body field's type, range and length, and
raises :class:`ProtocolError` with a ``code``; unknown body fields are ignored (a newer minor
version may add optional ones). Docs: ``docs/protocol.md``.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import uuid
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from . import preview as _preview
from .errors import DEFAULT_HINTS, ErrorCode, ProtocolError
from .limits import DEFAULT_LIMITS, Limits
from .version import PROTOCOL_VERSION

COMMAND = "command"  # client -> backend
EVENT = "event"  # backend -> client
BOTH = "both"

STATES = ("queued", "running", "done", "failed", "cancelled")
"""Job states; ``done``, ``failed`` and ``cancelled`` are terminal. Which stage a running job is
in (``stage1``, ``stage2``, ``mesh``...) is the separate ``stage`` field."""
TERMINAL_STATES = frozenset({"done", "failed", "cancelled"})
FOLLOWUP_MODES = ("refine", "continue")
"""``submit.mode`` with a ``parent`` (since 1.5): rerun the parent's detail stage with an edited
prompt, or add steps to its last stage."""
MAX_FOLLOWUP_STEPS = 1_000_000
TARGET_FORMATS = ("glb", "gltf", "obj", "ply", "stl", "arrays", "demo")
"""``submit`` reconstruction targets: a mesh file's bytes, vertex/face arrays, or ``demo`` (the
backend's built-in demo object; no buffers). ``demo`` is new in protocol 1.1."""

ID_RE = re.compile(r"[A-Za-z0-9_.:-]+")
FILE_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
SHA256_RE = re.compile(r"[0-9a-f]{64}")
MAX_INT = 2**63 - 1


def new_id() -> str:
    """A fresh random id (32 hex digits) for messages and jobs."""
    return uuid.uuid4().hex


def is_valid_id(value: Any, limits: Limits = DEFAULT_LIMITS) -> bool:
    return (
        isinstance(value, str)
        and 0 < len(value) <= limits.max_id_chars
        and ID_RE.fullmatch(value) is not None
    )


@dataclass(frozen=True)
class BufferSpec:
    """What a message type accepts for one named buffer: dtypes and a shape pattern (None = any
    size; the pattern's length is the required number of dimensions)."""

    dtypes: tuple[str, ...]
    shape: tuple[int | None, ...]
    required: bool = True


_MISSING = object()


class Fields:
    """Reads and validates body fields; every failure is a ``bad_field`` ProtocolError."""

    def __init__(self, where: str, body: dict, limits: Limits, ref=None, job=None) -> None:
        self.where, self.body, self.limits, self.ref, self.job = where, body, limits, ref, job

    def fail(self, name: str, what: str, code: str = ErrorCode.BAD_FIELD, hint=None):
        raise ProtocolError(code, f"{self.where}.{name}: {what}", hint, ref=self.ref, job=self.job)

    def _get(self, name: str, default, required: bool, nullable: bool):
        value = self.body.get(name, _MISSING)
        if value is _MISSING:
            if required:
                self.fail(name, "missing")
            return default, True
        if value is None:
            if not nullable:
                self.fail(name, "must not be null")
            return None, True
        return value, False

    def string(
        self,
        name: str,
        default: str | None = "",
        *,
        required: bool = False,
        nullable: bool = False,
        max_chars: int | None = None,
        pattern: re.Pattern | None = None,
        choices: tuple[str, ...] | None = None,
        code: str = ErrorCode.BAD_FIELD,
    ) -> str | None:
        value, done = self._get(name, default, required, nullable)
        if done:
            return value
        if not isinstance(value, str):
            self.fail(name, f"must be a string, not {type(value).__name__}")
        limit = self.limits.max_name_chars if max_chars is None else max_chars
        if len(value) > limit:
            self.fail(name, f"longer than {limit} characters ({len(value)})", code)
        if pattern is not None and pattern.fullmatch(value) is None:
            self.fail(name, f"{value[:40]!r} is not of the form {pattern.pattern}")
        if choices is not None and value not in choices:
            self.fail(name, f"{value[:40]!r} is not one of {', '.join(choices)}")
        return value

    def integer(
        self,
        name: str,
        default: int | None = 0,
        *,
        required: bool = False,
        nullable: bool = False,
        lo: int = 0,
        hi: int = MAX_INT,
    ) -> int | None:
        value, done = self._get(name, default, required, nullable)
        if done:
            return value
        if not isinstance(value, int) or isinstance(value, bool):
            self.fail(name, f"must be an integer, not {type(value).__name__}")
        if not lo <= value <= hi:
            self.fail(name, f"{value} is outside [{lo}, {hi}]")
        return value

    def number(
        self, name: str, default: float | None = None, *, nullable: bool = True
    ) -> float | None:
        value, done = self._get(name, default, False, nullable)
        if done:
            return value
        if not isinstance(value, int | float) or isinstance(value, bool):
            self.fail(name, f"must be a number, not {type(value).__name__}")
        value = float(value)
        if not math.isfinite(value):  # unreachable from JSON (NaN is rejected), kept for safety
            self.fail(name, "must be finite")
        return value

    def boolean(self, name: str, default: bool = False) -> bool:
        value, _ = self._get(name, default, False, False)
        if not isinstance(value, bool):
            self.fail(name, f"must be true or false, not {type(value).__name__}")
        return value

    def mapping(self, name: str) -> dict:
        """A JSON object with string keys (values are any JSON; the header size bounds them)."""
        value, done = self._get(name, {}, False, True)
        if done:
            return {} if value is None else value
        if not isinstance(value, dict):
            self.fail(name, f"must be an object, not {type(value).__name__}")
        return value

    def numbers(self, name: str) -> dict[str, float | None]:
        """An object of name -> finite number or null (e.g. losses)."""
        value = self.mapping(name)
        for k, v in value.items():
            if len(k) > self.limits.max_name_chars:
                self.fail(name, "key too long")
            if v is not None and (not isinstance(v, int | float) or isinstance(v, bool)):
                self.fail(f"{name}.{k[:40]}", "must be a number or null")
        return {k: (None if v is None else float(v)) for k, v in value.items()}

    def strings(self, name: str, *, max_items: int = 256, max_chars: int | None = None) -> list:
        value, done = self._get(name, [], False, True)
        if done:
            return [] if value is None else value
        if not isinstance(value, list) or len(value) > max_items:
            self.fail(name, f"must be a list of at most {max_items} strings")
        limit = self.limits.max_name_chars if max_chars is None else max_chars
        for item in value:
            if not isinstance(item, str) or len(item) > limit:
                self.fail(name, f"items must be strings of at most {limit} characters")
        return list(value)

    def objects(self, name: str, *, max_items: int) -> list[dict]:
        value, done = self._get(name, [], False, True)
        if done:
            return [] if value is None else value
        if not isinstance(value, list) or len(value) > max_items:
            self.fail(name, f"must be a list of at most {max_items} objects")
        for item in value:
            if not isinstance(item, dict):
                self.fail(name, "items must be objects")
        return value

    def sub(self, name: str, value: dict) -> Fields:
        return Fields(f"{self.where}.{name}", value, self.limits, self.ref, self.job)


# ----------------------------------------------------------------------------------------------


WORKER_STATES = ("starting", "idle", "busy")
MAX_WORKERS_LISTED = 256


@dataclass
class WorkerInfo:
    """One worker of the backend (``hello`` and ``status``, since 1.4)."""

    device: str
    """What it trains on, e.g. ``cpu`` or ``cuda (NVIDIA H100, 80 GiB)``."""
    state: str = "idle"
    """``starting`` (loading torch, or being replaced), ``idle`` or ``busy``."""
    job: str | None = None
    """Its job when that job is this client's (another client's job is not named)."""
    jobs_run: int = 0
    """Jobs its current process started (the first loads the models, the next reuse them)."""
    loads: int = 0
    """Guidance models its current process loaded (a warm job adds none)."""

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def parse_workers(f: Fields) -> list[WorkerInfo] | None:
    """The optional ``workers`` list of ``hello`` and ``job_state`` (None when absent)."""
    if f.body.get("workers") is None:
        return None
    out = []
    for i, entry in enumerate(f.objects("workers", max_items=MAX_WORKERS_LISTED)):
        e = f.sub(f"workers[{i}]", entry)
        out.append(
            WorkerInfo(
                device=e.string("device", required=True, max_chars=f.limits.max_text_chars),
                state=e.string("state", "idle", choices=WORKER_STATES),
                job=e.string(
                    "job", None, nullable=True, max_chars=f.limits.max_id_chars, pattern=ID_RE
                ),
                jobs_run=e.integer("jobs_run"),
                loads=e.integer("loads"),
            )
        )
    return out


@dataclass(kw_only=True)
class Message:
    """Base of every message. Subclasses set ``TYPE``, ``DIRECTION``, ``JOB`` ("none",
    "optional" or "required") and ``BUFFERS``, and implement ``body``, ``arrays`` and
    ``parse``."""

    TYPE: ClassVar[str] = ""
    DIRECTION: ClassVar[str] = BOTH
    JOB: ClassVar[str] = "none"
    BUFFERS: ClassVar[dict[str, BufferSpec]] = {}

    id: str = field(default_factory=new_id)
    re: str | None = None
    job: str | None = None

    def body(self) -> dict[str, Any]:
        return {}

    def arrays(self) -> dict[str, np.ndarray]:
        return {}

    @classmethod
    def parse(cls, f: Fields, arrays: dict[str, np.ndarray]) -> dict[str, Any]:
        """Validated constructor keyword arguments from the body reader and the arrays."""
        return {}

    @classmethod
    def from_wire(
        cls,
        *,
        id: str,
        re: str | None,
        job: str | None,
        body: dict,
        arrays: dict[str, np.ndarray],
        limits: Limits = DEFAULT_LIMITS,
    ) -> Message:
        f = Fields(cls.TYPE, body, limits, ref=id, job=job)
        return cls(id=id, re=re, job=job, **cls.parse(f, arrays))


def _check_points(f: Fields, name: str, n: int, cap: int) -> None:
    if n > cap:
        f.fail(name, f"{n} points, more than the limit of {cap}", ErrorCode.TOO_MANY_POINTS)


# --- handshake and housekeeping ---------------------------------------------------------------


@dataclass(kw_only=True)
class Hello(Message):
    """Handshake. The client sends its ``protocol`` and ``software``; the backend answers with a
    ``hello`` (``re`` set) that also lists its capabilities and limits."""

    TYPE = "hello"
    DIRECTION = BOTH
    protocol: str = PROTOCOL_VERSION
    software: str = ""
    device: str = ""
    models: list[str] = field(default_factory=list)
    presets: list[str] = field(default_factory=list)
    default_preset: str = ""
    features: list[str] = field(default_factory=list)
    limits: dict[str, int] = field(default_factory=dict)
    queue_length: int = 0
    workers: list[WorkerInfo] | None = None
    """The backend's workers (since 1.4; None from older backends and in a client's hello)."""

    def body(self):
        out = {
            "protocol": self.protocol,
            "software": self.software,
            "device": self.device,
            "models": list(self.models),
            "presets": list(self.presets),
            "default_preset": self.default_preset,
            "features": list(self.features),
            "limits": dict(self.limits),
            "queue_length": self.queue_length,
        }
        if self.workers is not None:
            out["workers"] = [w.to_dict() for w in self.workers]
        return out

    @classmethod
    def parse(cls, f, arrays):
        limits = f.mapping("limits")
        for k, v in limits.items():
            if not isinstance(v, int) or isinstance(v, bool):
                f.fail(f"limits.{k[:40]}", "must be an integer")
        return dict(
            protocol=f.string("protocol", required=True, max_chars=32),
            software=f.string("software", max_chars=f.limits.max_text_chars),
            device=f.string("device", max_chars=f.limits.max_text_chars),
            models=f.strings("models"),
            presets=f.strings("presets"),
            default_preset=f.string("default_preset"),
            features=f.strings("features"),
            limits=limits,
            queue_length=f.integer("queue_length"),
            workers=parse_workers(f),
        )


@dataclass(kw_only=True)
class Ping(Message):
    """Liveness check; answered by ``pong``."""

    TYPE = "ping"
    DIRECTION = COMMAND


@dataclass(kw_only=True)
class Pong(Message):
    TYPE = "pong"
    DIRECTION = EVENT


# --- commands ---------------------------------------------------------------------------------


@dataclass(kw_only=True)
class Submit(Message):
    """Start a job under the client-chosen ``job`` id. Either a ``prompt`` (text-to-3D) or a
    reconstruction ``target`` (fit Gaussians to a mesh through the oracle guidance).

    Optional buffers: ``init_points`` f32 [N,3] (+ ``init_colors`` f32 [N,3] in [0,1]) to start
    from a point cloud; for a target either ``target_file`` u8 [n] (the file's bytes, format in
    ``target_format``) or ``target_vertices`` f32 [V,3] + ``target_faces`` i32 [F,3]
    (+ ``target_colors`` f32 [V,3]) with ``target_format="arrays"``.
    """

    TYPE = "submit"
    DIRECTION = COMMAND
    JOB = "required"
    BUFFERS = {
        "init_points": BufferSpec(("<f4",), (None, 3), False),
        "init_colors": BufferSpec(("<f4",), (None, 3), False),
        "target_file": BufferSpec(("|u1",), (None,), False),
        "target_vertices": BufferSpec(("<f4",), (None, 3), False),
        "target_faces": BufferSpec(("<i4",), (None, 3), False),
        "target_colors": BufferSpec(("<f4",), (None, 3), False),
    }
    prompt: str = ""
    negative: str = ""
    preset: str | None = None
    """None: the backend's default preset."""
    seed: int | None = None
    """None: the backend picks one and reports it in ``job_state.seed``."""
    overrides: dict[str, Any] = field(default_factory=dict)
    """Config overrides, dotted keys to JSON values (``{"stage1.steps": 500}``); the backend
    validates them against its config (``bad_override``)."""
    target_format: str | None = None
    target_name: str = ""
    preview_points: int | None = None
    """Most Gaussians per preview for this client; 0 = no previews; None = backend default."""
    models: str | None = None
    """Text jobs: the model set (``list_models``); None = the backend's default set. Since 1.3
    (feature ``models``)."""
    wait_for_models: bool = False
    """Text jobs whose set is not downloaded: wait for its download (started if none runs)
    instead of failing at once with ``models_missing``. Since 1.3 (feature ``models``)."""
    init_points: np.ndarray | None = None  # [N, 3] f32
    init_colors: np.ndarray | None = None  # [N, 3] f32
    target_file: np.ndarray | None = None  # [n] u8
    target_vertices: np.ndarray | None = None  # [V, 3] f32
    target_faces: np.ndarray | None = None  # [F, 3] i32
    target_colors: np.ndarray | None = None  # [V, 3] f32
    parent: str | None = None
    """A finished text job of the same client to refine or continue (since 1.5)."""
    mode: str | None = None
    """With ``parent``: ``refine`` or ``continue`` (since 1.5)."""
    steps: int | None = None
    """With ``parent``: continue: steps to add (required); refine: steps of the rerun stage
    (None: the parent's). Since 1.5."""

    def body(self):
        target = None
        if self.target_format is not None:
            target = {"format": self.target_format, "name": self.target_name}
        body = {
            "prompt": self.prompt,
            "negative": self.negative,
            "preset": self.preset,
            "seed": self.seed,
            "overrides": dict(self.overrides),
            "target": target,
            "preview_points": self.preview_points,
        }
        if self.parent is not None:  # only then: the digests of other submits are unchanged
            body.update(parent=self.parent, mode=self.mode, steps=self.steps)
        # Since 1.3; only when given, so the digest of a submit without them is unchanged.
        if self.models is not None:
            body["models"] = self.models
        if self.wait_for_models:
            body["wait_for_models"] = True
        return body

    def arrays(self):
        return {k: getattr(self, k) for k in self.BUFFERS if getattr(self, k) is not None}

    @classmethod
    def parse(cls, f, arrays):
        lim = f.limits
        code = ErrorCode.PROMPT_TOO_LONG
        kw = dict(
            prompt=f.string("prompt", max_chars=lim.max_prompt_chars, code=code),
            negative=f.string("negative", max_chars=lim.max_prompt_chars, code=code),
            preset=f.string("preset", None, nullable=True),
            seed=f.integer("seed", None, nullable=True),
            overrides=f.mapping("overrides"),
            preview_points=f.integer(
                "preview_points", None, nullable=True, hi=lim.max_preview_points
            ),
            parent=f.string(
                "parent", None, nullable=True, max_chars=lim.max_id_chars, pattern=ID_RE
            ),  # fmt: skip
            mode=f.string("mode", None, nullable=True, choices=FOLLOWUP_MODES),
            steps=f.integer("steps", None, nullable=True, lo=1, hi=MAX_FOLLOWUP_STEPS),
            models=f.string("models", None, nullable=True),
            wait_for_models=f.boolean("wait_for_models"),
        )
        if (kw["parent"] is None) != (kw["mode"] is None):
            f.fail("mode", "parent and mode go together (refine or continue a finished job)")
        if kw["parent"] is not None and kw["mode"] == "continue" and kw["steps"] is None:
            f.fail("steps", "continue needs the number of steps to add")
        target = f.mapping("target")
        kw["target_format"] = None
        if target:
            t = f.sub("target", target)
            kw["target_format"] = t.string("format", required=True, choices=TARGET_FORMATS)
            kw["target_name"] = t.string("name")
        kw.update(arrays)

        fmt = kw["target_format"]
        if kw["parent"] is not None and (fmt is not None or arrays):
            f.fail("parent", "a refine or continue takes no target and no initial points")
        if not kw["prompt"].strip() and fmt is None and kw["parent"] is None:
            f.fail("prompt", "empty: give a prompt or a reconstruction target")
        points = arrays.get("init_points")
        if "init_colors" in arrays:
            if points is None or len(arrays["init_colors"]) != len(points):
                f.fail("init_colors", "needs init_points of the same length", ErrorCode.BAD_BUFFER)
        if points is not None:
            _check_points(f, "init_points", len(points), lim.max_init_points)
        mesh_keys = {"target_vertices", "target_faces", "target_colors"} & arrays.keys()
        if fmt == "arrays":
            if "target_file" in arrays or not {"target_vertices", "target_faces"} <= mesh_keys:
                f.fail("target", "format 'arrays' needs target_vertices and target_faces")
            nv = len(arrays["target_vertices"])
            if "target_colors" in arrays and len(arrays["target_colors"]) != nv:
                f.fail("target_colors", "must have one row per vertex", ErrorCode.BAD_BUFFER)
            faces = arrays["target_faces"]
            if faces.size and (faces.min() < 0 or faces.max() >= nv):
                f.fail("target_faces", f"indices must be in [0, {nv})", ErrorCode.BAD_BUFFER)
        elif fmt == "demo":
            if "target_file" in arrays or mesh_keys:
                f.fail("target", "format 'demo' takes no target buffers")
        elif fmt is not None:
            if "target_file" not in arrays or mesh_keys:
                f.fail("target", f"format {fmt!r} needs exactly the target_file buffer")
        elif "target_file" in arrays or mesh_keys:
            f.fail("target", "target buffers sent without a target")
        size = sum(arrays[k].nbytes for k in mesh_keys | ({"target_file"} & arrays.keys()))
        if size > lim.max_target_bytes:
            f.fail(
                "target",
                f"{size} bytes, over the {lim.max_target_bytes} limit",
                ErrorCode.TOO_LARGE,
            )
        return kw

    def digest(self) -> str:
        """SHA-256 over the body and buffers: equal digests mean an identical request, so a
        backend can answer a resubmission of a known job id with its state (harmless) and one
        with different content with ``job_conflict``."""
        h = hashlib.sha256()
        h.update(json.dumps(self.body(), sort_keys=True, separators=(",", ":")).encode())
        for name, a in sorted(self.arrays().items()):
            a = np.ascontiguousarray(a)
            h.update(f"\0{name}\0{a.dtype.str}\0{list(a.shape)}\0".encode())
            h.update(a.reshape(-1).view(np.uint8))
        return h.hexdigest()


@dataclass(kw_only=True)
class Cancel(Message):
    """Cancel a queued or running job; answered by its ``job_state``."""

    TYPE = "cancel"
    DIRECTION = COMMAND
    JOB = "required"


@dataclass(kw_only=True)
class Status(Message):
    """Ask for one job's state; answered by ``job_state`` (or ``error`` ``unknown_job``)."""

    TYPE = "status"
    DIRECTION = COMMAND
    JOB = "required"


@dataclass(kw_only=True)
class ListJobs(Message):
    """Ask for the jobs the backend knows, oldest first, one page at a time; answered by
    ``jobs``. ``offset``: how many to skip (the previous page's ``next``); ``limit``: at most this
    many (null: as many as fit one reply). Since 1.2 (older backends ignore both fields and
    answer with one page from the start)."""

    TYPE = "list_jobs"
    DIRECTION = COMMAND
    offset: int = 0
    limit: int | None = None
    active: bool = False
    """Only jobs queued or running (since 1.5; older backends list every job)."""

    def body(self):
        body = {"offset": self.offset, "limit": self.limit}
        if self.active:
            body["active"] = True
        return body

    @classmethod
    def parse(cls, f, arrays):
        return dict(
            offset=f.integer("offset"),
            limit=f.integer("limit", None, nullable=True, lo=1, hi=f.limits.max_jobs_listed),
            active=f.boolean("active", False),
        )


@dataclass(kw_only=True)
class Attach(Message):
    """Follow a job (e.g. one submitted by another client, or after a reconnect): the backend
    answers with ``job_state`` and then sends this client the job's events. If the job is done,
    the backend also re-sends its ``result`` manifest."""

    TYPE = "attach"
    DIRECTION = COMMAND
    JOB = "required"
    preview_points: int | None = None

    def body(self):
        return {"preview_points": self.preview_points}

    @classmethod
    def parse(cls, f, arrays):
        cap = f.limits.max_preview_points
        return dict(preview_points=f.integer("preview_points", None, nullable=True, hi=cap))


@dataclass(kw_only=True)
class Detach(Message):
    """Stop following a job (it keeps running); answered by ``job_state``."""

    TYPE = "detach"
    DIRECTION = COMMAND
    JOB = "required"


@dataclass(kw_only=True)
class Delete(Message):
    """Forget a job: cancel it if it is queued or running, then remove its record, checkpoints
    and results from the backend's disk. Answered by ``jobs`` (the jobs that remain), or
    ``error`` ``unknown_job``. New in 1.1 (feature ``delete``)."""

    TYPE = "delete"
    DIRECTION = COMMAND
    JOB = "required"


@dataclass(kw_only=True)
class GetLogs(Message):
    """Ask for the backend's recent log lines (numbered from 1), those after line ``since``,
    at most ``max_lines`` (the newest ones); with ``job``, only that job's lines. Answered by
    ``logs``. New in 1.1 (feature ``logs``)."""

    TYPE = "get_logs"
    DIRECTION = COMMAND
    JOB = "optional"
    since: int = 0
    max_lines: int = 200

    def body(self):
        return {"since": self.since, "max_lines": self.max_lines}

    @classmethod
    def parse(cls, f, arrays):
        return dict(
            since=f.integer("since"), max_lines=f.integer("max_lines", 200, lo=1, hi=MAX_LOG_LINES)
        )


MAX_LOG_LINES = 1000
"""Most lines in one ``logs`` reply."""


@dataclass(kw_only=True)
class PreviewAck(Message):
    """Flow control for previews: the client has consumed the preview of ``step``. The backend
    keeps at most ``PREVIEW_CREDIT`` unacknowledged previews in flight per client and job and,
    while none is free, keeps only the newest one (latest frame wins). No reply."""

    TYPE = "preview_ack"
    DIRECTION = COMMAND
    JOB = "required"
    step: int = 0

    def body(self):
        return {"step": self.step}

    @classmethod
    def parse(cls, f, arrays):
        return dict(step=f.integer("step"))


PREVIEW_CREDIT = 2
"""Unacknowledged previews a backend may have in flight per client and job."""


@dataclass(kw_only=True)
class Fetch(Message):
    """Ask for chunk ``index`` of result file ``file``; answered by ``result_chunk``. A client
    may keep several requests in flight (the bundled client keeps 4)."""

    TYPE = "fetch"
    DIRECTION = COMMAND
    JOB = "required"
    file: str = ""
    index: int = 0

    def body(self):
        return {"file": self.file, "index": self.index}

    @classmethod
    def parse(cls, f, arrays):
        return dict(
            file=f.string("file", required=True, pattern=FILE_NAME_RE), index=f.integer("index")
        )


# --- events -----------------------------------------------------------------------------------


@dataclass(kw_only=True)
class JobState(Message):
    """A job's state (sent on every change, and in answer to submit, cancel, status, attach,
    detach). Never dropped."""

    TYPE = "job_state"
    DIRECTION = EVENT
    JOB = "required"
    state: str = "queued"
    stage: str = ""
    step: int = 0
    total: int = 0
    queue_position: int | None = None
    seed: int | None = None
    message: str = ""
    workers: list[WorkerInfo] | None = None
    """In the answer to ``status`` (since 1.4): the backend's workers; None otherwise."""

    def body(self):
        out = {
            "state": self.state,
            "stage": self.stage,
            "step": self.step,
            "total": self.total,
            "queue_position": self.queue_position,
            "seed": self.seed,
            "message": self.message,
        }
        if self.workers is not None:
            out["workers"] = [w.to_dict() for w in self.workers]
        return out

    @classmethod
    def parse(cls, f, arrays):
        return dict(
            state=f.string("state", required=True, choices=STATES),
            stage=f.string("stage"),
            step=f.integer("step"),
            total=f.integer("total"),
            queue_position=f.integer("queue_position", None, nullable=True),
            seed=f.integer("seed", None, nullable=True),
            message=f.string("message", max_chars=f.limits.max_text_chars),
            workers=parse_workers(f),
        )

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_STATES


@dataclass
class JobInfo:
    """One entry of a ``jobs`` reply."""

    job: str
    state: str
    stage: str = ""
    step: int = 0
    total: int = 0
    prompt: str = ""
    created: float | None = None
    """Unix time the job was submitted."""
    queue_position: int | None = None
    """0 = next, while queued (since 1.5)."""
    seed: int | None = None
    """The job's seed (since 1.5)."""
    parent: str | None = None
    """The job it refines or continues (since 1.5)."""
    mode: str | None = None
    """``refine`` or ``continue`` when it has a parent (since 1.5)."""
    mine: bool = True
    """Submitted with the asking client's key (since 1.5; an operator also sees other keys'
    jobs, with ``mine`` false)."""
    models: str = ""
    """Text jobs: the model set that makes it (since 1.3), so its licence can be told later."""

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(kw_only=True)
class Jobs(Message):
    """Answer to ``list_jobs`` (and ``delete``): one page of the jobs this client may see,
    oldest first. ``offset``: where the page starts; ``total``: how many jobs there are;
    ``next``: the ``offset`` of the next page, or null when this page is the last."""

    TYPE = "jobs"
    DIRECTION = EVENT
    jobs: list[JobInfo] = field(default_factory=list)
    offset: int = 0
    total: int | None = None
    next: int | None = None
    others_active: int | None = None
    """Jobs queued or running on the backend that other client keys submitted (counted, not
    listed; since 1.5)."""

    def body(self):
        return {
            "jobs": [j.to_dict() for j in self.jobs],
            "offset": self.offset,
            "total": self.total,
            "next": self.next,
            "others_active": self.others_active,
        }

    @classmethod
    def parse(cls, f, arrays):
        out = []
        for i, entry in enumerate(f.objects("jobs", max_items=f.limits.max_jobs_listed)):
            e = f.sub(f"jobs[{i}]", entry)
            job = e.string("job", required=True, max_chars=f.limits.max_id_chars, pattern=ID_RE)
            out.append(
                JobInfo(
                    job=job,
                    state=e.string("state", required=True, choices=STATES),
                    stage=e.string("stage"),
                    step=e.integer("step"),
                    total=e.integer("total"),
                    prompt=e.string("prompt", max_chars=f.limits.max_prompt_chars),
                    created=e.number("created"),
                    queue_position=e.integer("queue_position", None, nullable=True),
                    seed=e.integer("seed", None, nullable=True),
                    parent=e.string(
                        "parent",
                        None,
                        nullable=True,
                        max_chars=f.limits.max_id_chars,
                        pattern=ID_RE,
                    ),  # fmt: skip
                    mode=e.string("mode", None, nullable=True, choices=FOLLOWUP_MODES),
                    mine=e.boolean("mine", True),
                    models=e.string("models"),
                )
            )
        return dict(
            jobs=out,
            offset=f.integer("offset"),
            total=f.integer("total", None, nullable=True),
            next=f.integer("next", None, nullable=True),
            others_active=f.integer("others_active", None, nullable=True),
        )


@dataclass(kw_only=True)
class Progress(Message):
    """Training progress. Loss values that are not finite are sent as null."""

    TYPE = "progress"
    DIRECTION = EVENT
    JOB = "required"
    stage: str = ""
    step: int = 0
    total: int = 0
    losses: dict[str, float | None] = field(default_factory=dict)
    num_gaussians: int = 0
    timestep: float | None = None
    """Diffusion timestep t of this step (in [0, 1]), when the stage samples one."""
    elapsed_s: float | None = None
    eta_s: float | None = None
    """Estimated seconds until the whole job is done."""

    def body(self):
        return {
            "stage": self.stage,
            "step": self.step,
            "total": self.total,
            "losses": dict(self.losses),
            "num_gaussians": self.num_gaussians,
            "timestep": self.timestep,
            "elapsed_s": self.elapsed_s,
            "eta_s": self.eta_s,
        }

    @classmethod
    def parse(cls, f, arrays):
        return dict(
            stage=f.string("stage"),
            step=f.integer("step"),
            total=f.integer("total"),
            losses=f.numbers("losses"),
            num_gaussians=f.integer("num_gaussians"),
            timestep=f.number("timestep"),
            elapsed_s=f.number("elapsed_s"),
            eta_s=f.number("eta_s"),
        )


@dataclass(kw_only=True)
class Preview(Message):
    """The current Gaussians in the 34-byte encoding (:mod:`stabledreamer_protocol.preview`):
    ``position`` f32 [N,3] and ``attributes`` f16 [N,11]. May be dropped (latest wins)."""

    TYPE = "preview"
    DIRECTION = EVENT
    JOB = "required"
    BUFFERS = {
        "position": BufferSpec(("<f4",), (None, 3)),
        "attributes": BufferSpec(("<f2",), (None, _preview.ATTRIBUTE_COLUMNS)),
    }
    stage: str = ""
    step: int = 0
    total_gaussians: int = 0
    """Gaussians in the model (>= the N sent when the backend capped the preview)."""
    layout: str = _preview.LAYOUT
    position: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), np.float32))
    attributes: np.ndarray = field(
        default_factory=lambda: np.zeros((0, _preview.ATTRIBUTE_COLUMNS), np.float16)
    )

    @classmethod
    def from_gaussians(
        cls, job: str, means, log_scales, quats, rgb, opacities, *, max_points=None, **kw
    ) -> Preview:
        """Pack plain numpy arrays (see :func:`stabledreamer_protocol.preview.pack`)."""
        position, attributes = _preview.pack(
            means, log_scales, quats, rgb, opacities, max_points=max_points
        )
        kw.setdefault("total_gaussians", int(np.asarray(means).shape[0]))
        return cls(job=job, position=position, attributes=attributes, **kw)

    def gaussians(self, log_scales: bool = True) -> dict[str, np.ndarray]:
        """Unpacked float32 arrays: means, log_scales (unless ``log_scales`` is false), scales,
        quats, rgba, and rgb and opacities (views into rgba); see ``preview.unpack``."""
        return _preview.unpack(self.position, self.attributes, log_scales=log_scales)

    @property
    def count(self) -> int:
        return int(self.position.shape[0])

    def body(self):
        return {
            "stage": self.stage,
            "step": self.step,
            "total_gaussians": self.total_gaussians,
            "layout": self.layout,
        }

    def arrays(self):
        return {"position": self.position, "attributes": self.attributes}

    @classmethod
    def parse(cls, f, arrays):
        n = len(arrays["position"])
        if len(arrays["attributes"]) != n:
            f.fail("attributes", "must have one row per position", ErrorCode.BAD_BUFFER)
        _check_points(f, "position", n, f.limits.max_preview_points)
        return dict(
            stage=f.string("stage"),
            step=f.integer("step"),
            total_gaussians=f.integer("total_gaussians"),
            layout=f.string("layout", required=True, choices=(_preview.LAYOUT,)),
            **arrays,
        )


@dataclass(kw_only=True)
class DebugImage(Message):
    """The guidance debug strip (render | noisy input | one-step estimate x0), 8-bit sRGB
    ``image`` u8 [H, W, 3 or 4]; ``labels`` name the panels left to right."""

    TYPE = "debug_image"
    DIRECTION = EVENT
    JOB = "required"
    BUFFERS = {"image": BufferSpec(("|u1",), (None, None, None))}
    stage: str = ""
    step: int = 0
    timestep: float | None = None
    labels: list[str] = field(default_factory=list)
    image: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, 3), np.uint8))

    def body(self):
        return {
            "stage": self.stage,
            "step": self.step,
            "timestep": self.timestep,
            "labels": list(self.labels),
        }

    def arrays(self):
        return {"image": self.image}

    @classmethod
    def parse(cls, f, arrays):
        h, w, c = arrays["image"].shape
        side = f.limits.max_image_side
        if c not in (3, 4) or h > side or w > side:
            f.fail("image", f"must be [H<={side}, W<={side}, 3|4]", ErrorCode.BAD_SHAPE)
        return dict(
            stage=f.string("stage"),
            step=f.integer("step"),
            timestep=f.number("timestep"),
            labels=f.strings("labels", max_items=16),
            image=arrays["image"],
        )


@dataclass
class ResultFile:
    """One file of a ``result`` manifest."""

    name: str
    """Plain file name (no folders), e.g. ``mesh.glb``, ``gaussians.ply``."""
    size: int
    sha256: str
    """Lower-case hex SHA-256 of the whole file."""
    media_type: str = "application/octet-stream"

    def chunks(self, chunk_size: int) -> int:
        return -(-self.size // chunk_size)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(kw_only=True)
class Result(Message):
    """The job's output files (manifest only: the bytes come as ``result_chunk`` answers to
    ``fetch``, so the client never reads the backend's disk). Sent when the job is done, and
    again on ``attach`` to a done job. Never dropped."""

    TYPE = "result"
    DIRECTION = EVENT
    JOB = "required"
    files: list[ResultFile] = field(default_factory=list)
    chunk_size: int = 1 << 20
    metrics: dict[str, Any] = field(default_factory=dict)

    def body(self):
        return {
            "files": [r.to_dict() for r in self.files],
            "chunk_size": self.chunk_size,
            "metrics": dict(self.metrics),
        }

    @classmethod
    def parse(cls, f, arrays):
        lim = f.limits
        files, names = [], set()
        for i, entry in enumerate(f.objects("files", max_items=lim.max_result_files)):
            e = f.sub(f"files[{i}]", entry)
            r = ResultFile(
                name=e.string("name", required=True, pattern=FILE_NAME_RE),
                size=e.integer("size", required=True, hi=lim.max_result_bytes),
                sha256=e.string("sha256", required=True, pattern=SHA256_RE),
                media_type=e.string("media_type", "application/octet-stream"),
            )
            if r.name in names:
                e.fail("name", f"duplicate file {r.name!r}")
            names.add(r.name)
            files.append(r)
        return dict(
            files=files,
            chunk_size=f.integer("chunk_size", required=True, lo=1, hi=lim.max_chunk_bytes),
            metrics=f.mapping("metrics"),
        )

    def file(self, name: str) -> ResultFile:
        for r in self.files:
            if r.name == name:
                return r
        raise KeyError(name)


@dataclass(kw_only=True)
class ResultChunk(Message):
    """Chunk ``index`` of result file ``file``: bytes [offset, offset + len(data)), with the
    chunk's own SHA-256. Answers ``fetch``."""

    TYPE = "result_chunk"
    DIRECTION = EVENT
    JOB = "required"
    BUFFERS = {"data": BufferSpec(("|u1",), (None,))}
    file: str = ""
    index: int = 0
    offset: int = 0
    sha256: str = ""
    data: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint8))

    def body(self):
        return {
            "file": self.file,
            "index": self.index,
            "offset": self.offset,
            "sha256": self.sha256,
        }

    def arrays(self):
        return {"data": self.data}

    @classmethod
    def parse(cls, f, arrays):
        if arrays["data"].nbytes > f.limits.max_chunk_bytes:
            f.fail("data", "chunk larger than max_chunk_bytes", ErrorCode.TOO_LARGE)
        return dict(
            file=f.string("file", required=True, pattern=FILE_NAME_RE),
            index=f.integer("index"),
            offset=f.integer("offset"),
            sha256=f.string("sha256", required=True, pattern=SHA256_RE),
            data=arrays["data"],
        )


@dataclass(kw_only=True)
class Logs(Message):
    """Answer to ``get_logs``: ``lines`` oldest first (each ``"time level source: text"``),
    ``cursor`` the number of the last line included (pass it as ``since`` next time to get only
    newer lines). The backend keeps the reply within ``max_header_bytes`` by leaving out the
    oldest lines."""

    TYPE = "logs"
    DIRECTION = EVENT
    JOB = "optional"
    lines: list[str] = field(default_factory=list)
    cursor: int = 0

    def body(self):
        return {"lines": list(self.lines), "cursor": self.cursor}

    @classmethod
    def parse(cls, f, arrays):
        return dict(
            lines=f.strings("lines", max_items=MAX_LOG_LINES, max_chars=f.limits.max_text_chars),
            cursor=f.integer("cursor"),
        )


@dataclass(kw_only=True)
class Error(Message):
    """A refused request or a failed job: ``code`` (see ``ErrorCode``), ``message`` (what went
    wrong), ``hint`` (what the user can do). ``re`` names the offending request when known,
    ``job`` the job. This body is frozen across protocol versions, so every client can read a
    ``version_mismatch`` error. Never dropped."""

    TYPE = "error"
    DIRECTION = EVENT
    JOB = "optional"
    code: str = ErrorCode.INTERNAL
    message: str = ""
    hint: str | None = None
    """None: the code's default hint (``errors.DEFAULT_HINTS``), if any."""

    def __post_init__(self) -> None:
        if self.hint is None:
            self.hint = DEFAULT_HINTS.get(self.code, "")

    def body(self):
        return {"code": self.code, "message": self.message, "hint": self.hint}

    @classmethod
    def parse(cls, f, arrays):
        text = f.limits.max_text_chars
        return dict(
            code=f.string("code", required=True),
            message=f.string("message", max_chars=text),
            hint=f.string("hint", max_chars=text),
        )

    @classmethod
    def from_exception(cls, exc: ProtocolError, **kw) -> Error:
        """The reply to a ProtocolError; ``re`` and ``job`` default to what the decoder read."""
        kw.setdefault("re", exc.ref)
        kw.setdefault("job", exc.job)
        return cls(code=exc.code, message=exc.message[:4000], hint=(exc.hint or "")[:4000], **kw)

    def to_exception(self) -> ProtocolError:
        return ProtocolError(self.code, self.message, self.hint, ref=self.re, job=self.job)


MESSAGE_TYPES: dict[str, type[Message]] = {
    cls.TYPE: cls
    for cls in (
        Hello,
        Ping,
        Pong,
        Submit,
        Cancel,
        Status,
        ListJobs,
        Attach,
        Detach,
        Delete,
        GetLogs,
        PreviewAck,
        Fetch,
        JobState,
        Jobs,
        Progress,
        Preview,
        DebugImage,
        Result,
        ResultChunk,
        Logs,
        Error,
    )
}
"""Every message type by its wire name."""

# The model messages (since 1.3) live in their own module, which builds on this one.
from .model_messages import MODEL_MESSAGE_TYPES  # noqa: E402

MESSAGE_TYPES.update({cls.TYPE: cls for cls in MODEL_MESSAGE_TYPES})
