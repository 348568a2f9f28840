"""Checking a ``submit``: a message the codec accepted becomes a job record and the files to write
into its folder, or a :class:`ProtocolError` that says what to change.

The codec has already checked types, sizes and shapes; here are the rules that need the
backend: what kinds of jobs it runs, its presets, its queue, and a dry run of the job's config.
"""

from __future__ import annotations

import io
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stabledreamer_protocol import ErrorCode, Limits, ProtocolError, Submit

from ..presets import TEXT_PRESETS
from .followups import FollowUpJob, ParentRef, followup_prepared
from .jobs import DEFAULT_PRESET, INIT_FILE, ConfigError, JobRecord, JobStore, build_config

TEXT_DEFAULT_PRESET = "standard"


@dataclass(frozen=True)
class NewJob:
    record: JobRecord
    files: dict[str, bytes | memoryview | Path]
    """File name (in the job folder) -> bytes: the uploaded target, the initial points; or a
    path: a file of the parent job, linked (``followups``)."""


@dataclass(frozen=True)
class Prepared:
    """What a submit asks for, checked, before it becomes a record (``SubmitCheck.prepare``)."""

    kind: str
    preset: str
    seed: int
    files: dict[str, bytes | memoryview | Path]
    target_file: str
    init_file: str
    model_set: str = ""
    """Text jobs: the model set it runs with (the submit's, else the service's default)."""
    models_missing: Exception | None = None
    """Text jobs: ``ModelsMissingError`` when the set's models are not on this machine."""
    followup: FollowUpJob | None = None
    """A refine or continue: its parent, mode, steps and effective prompts (``followups``)."""


class SubmitCheck:
    """Turns accepted ``submit`` messages into new jobs: ``prepare`` checks the request and
    builds its files (it reads nothing of the store's state, so it may run on an upload thread),
    ``record`` makes the job record (queue limit, submission order: on the service loop)."""

    def __init__(
        self,
        limits: Limits,
        store: JobStore,
        models: dict[str, str] | None = None,
        default_set: str = "",
    ) -> None:
        self.limits = limits
        self.store = store
        self.models = models or {}
        """``serve --if-model/--sd-model``: {"if": ..., "sd": ...} (the worker uses the same;
        follow-ups are checked with them too)."""
        self.default_set = default_set

    def check(self, msg: Submit, digest: str, parent: ParentRef | None = None) -> NewJob:
        """``parent``: the resolved parent of a refine or continue (``followups``)."""
        prepared = self.prepare(msg, parent)
        return NewJob(self.record(msg, digest, prepared), prepared.files)

    def prepare(self, msg: Submit, parent: ParentRef | None = None) -> Prepared:
        self._check_fields(msg)
        if msg.parent is not None:  # a refine or continue: from the parent's config and state
            if parent is None:  # resolved by the service loop (it needs the client's key)
                raise ProtocolError(ErrorCode.INTERNAL, "a follow-up reached prepare unresolved")
            return followup_prepared(msg, parent, self.models)
        kind = {None: "generate", "demo": "demo"}.get(msg.target_format, "reconstruct")
        preset = msg.preset or (TEXT_DEFAULT_PRESET if kind == "generate" else DEFAULT_PRESET)
        if (kind == "generate") != (preset in TEXT_PRESETS):
            want = TEXT_PRESETS if kind == "generate" else "reconstruct or smoke"
            raise ProtocolError(
                ErrorCode.UNKNOWN_PRESET,
                f"preset {preset!r} does not fit a {kind} job; use {want}",
            )
        seed = msg.seed if msg.seed is not None else random.randrange(2**31)
        files: dict[str, bytes | memoryview] = {}
        target_file = ""
        if msg.target_format == "arrays":
            target_file = "target.npz"
            files[target_file] = target_npz(msg)
        elif kind == "reconstruct":
            target_file = f"target.{msg.target_format}"
            upload = memoryview(np.ascontiguousarray(msg.target_file)).cast("B")  # no copy
            files[target_file] = self_contained(msg.target_format, upload)
        init_file = ""
        if msg.init_points is not None:
            init_file = INIT_FILE
            files[init_file] = init_npz(msg)
        model_set = (msg.models or self.default_set) if kind == "generate" else ""
        try:  # validate preset and overrides now, so the submitter gets a clear reply
            cfg = build_config(preset, msg.overrides, seed, "validate", msg.prompt, msg.negative,
                               self.models, model_set=model_set or None)  # fmt: skip
        except ConfigError as e:
            raise ProtocolError(e.code, str(e)) from None
        if msg.init_points is not None:
            check_init_points(len(msg.init_points), cfg)
        missing = None
        if kind == "generate":
            from ..models import ModelsMissingError
            from ..models.store import require_run_models

            try:  # the files only (no torch, no model loads): the reply comes at once
                require_run_models(cfg)
            except ModelsMissingError as e:
                missing = e
        return Prepared(kind, preset, seed, files, target_file, init_file, cfg.models, missing)

    def record(self, msg: Submit, digest: str, p: Prepared) -> JobRecord:
        if self.store.active_count() >= self.limits.max_queue:
            raise ProtocolError(
                ErrorCode.QUEUE_FULL,
                f"{self.limits.max_queue} jobs are already queued or running",
            )
        fields = dict(
            job=msg.job,
            seq=self.store.next_seq(),
            digest=digest,
            kind=p.kind,
            preset=p.preset,
            seed=p.seed,
            overrides=msg.overrides,
            prompt=msg.prompt if p.kind == "generate" else "",
            negative=msg.negative if p.kind == "generate" else "",
            target_name=msg.target_name
            or {"demo": "demo", "generate": msg.prompt[:80]}.get(p.kind, msg.target_format),
            target_file=p.target_file,
            init_file=p.init_file,
            preview_points=msg.preview_points,
            model_set=p.model_set,
            wait_models=msg.wait_for_models and p.kind == "generate",
        )
        if p.followup is not None:  # its parent, mode, steps and effective prompts
            fields.update(p.followup.record_fields())
        return JobRecord(**fields)

    def _check_fields(self, msg: Submit) -> None:
        if msg.target_format is None and not msg.prompt.strip() and msg.parent is None:
            raise ProtocolError(
                ErrorCode.BAD_FIELD,
                "the prompt is empty",
                'Say what to make, e.g. "a ceramic teapot", or send a reconstruction target.',
            )
        if msg.target_format == "stl":
            raise ProtocolError(
                ErrorCode.UNSUPPORTED,
                "STL files carry no colours to reconstruct",
                "Export the mesh as .glb, .ply or .obj with colours (or send vertex arrays).",
            )
        if msg.init_points is not None and msg.target_format is not None:
            raise ProtocolError(
                ErrorCode.UNSUPPORTED,
                "init_points are not used by reconstructions",
                "Submit again without init_points (they start text jobs from a blockout).",
            )
        if msg.init_points is not None and not (
            len(msg.init_points) > 0 and np.isfinite(msg.init_points).all()
        ):
            raise ProtocolError(
                ErrorCode.BAD_FIELD,
                "init_points must be a non-empty array of finite coordinates",
                "Sample points from a mesh with a surface, inside the unit ball.",
            )


def self_contained(fmt: str, data: bytes | memoryview) -> bytes | memoryview:
    """An uploaded mesh that names no other file: only its own bytes reach the backend, so a
    reference could only point at the backend's disk (``../../etc/passwd``). glTF buffers and
    images must be ``data:`` URIs (refused otherwise); an OBJ's ``mtllib`` lines are dropped
    (its material file is not uploaded; colours come from the vertices)."""
    if fmt in ("gltf", "glb"):
        for uri in _gltf_uris(fmt, data):
            if not uri.startswith("data:"):
                raise ProtocolError(
                    ErrorCode.UNSUPPORTED,
                    f"the {fmt} names a file outside itself ({uri[:80]!r})",
                    "Export as .glb (binary glTF with everything embedded).",
                )
    if fmt == "obj":
        lines = bytes(data).split(b"\n")
        kept = [ln for ln in lines if not ln.lstrip().lower().startswith(b"mtllib")]
        if len(kept) != len(lines):
            data = b"\n".join(kept)
    return data


def _gltf_uris(fmt: str, data: bytes | memoryview) -> list[str]:
    import json
    import struct

    try:
        if fmt == "glb":
            if len(data) < 20 or data[:4] != b"glTF":
                return []  # not a GLB: the loader refuses it with its own message
            (length,) = struct.unpack_from("<I", data, 12)
            data = data[20 : 20 + length]
        doc = json.loads(bytes(data).decode("utf-8"))
    except (ValueError, struct.error):
        return []  # not JSON: no references; the loader refuses it
    uris = []
    for key in ("buffers", "images"):
        items = doc.get(key, []) if isinstance(doc, dict) else []
        for item in items if isinstance(items, list) else []:
            if isinstance(item, dict) and "uri" in item:
                uris.append(str(item["uri"]))
    return uris


def check_init_points(n: int, cfg) -> None:
    """A job starts with one Gaussian per initial point: no more than its stages may ever hold
    (``strategy.max_gaussians``), which is what the preset sized its memory for."""
    cap = max(stage.strategy.max_gaussians for stage in cfg.stages)
    if n > cap:
        raise ProtocolError(
            ErrorCode.TOO_MANY_POINTS,
            f"{n} initial points; a {cfg.preset} job holds at most {cap} Gaussians",
            f"Send at most {cap} points (decimate the point cloud).",
        )


def target_npz(msg: Submit) -> bytes:
    arrays = {"vertices": msg.target_vertices, "faces": msg.target_faces}
    if msg.target_colors is not None:
        arrays["colors"] = msg.target_colors
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def init_npz(msg: Submit) -> bytes:
    arrays = {"points": msg.init_points}
    if msg.init_colors is not None:
        arrays["colors"] = np.clip(np.nan_to_num(msg.init_colors), 0.0, 1.0)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()
