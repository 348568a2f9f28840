"""Reading a job record back from disk: every field checked, because a ``job.json`` may be
anything after a crash, a bad disk or a hand edit (valid JSON of the wrong shape included).

:func:`parse_record` returns a :class:`~.jobs.JobRecord` whose every field has its declared type
and a sane value, or raises :class:`RecordError` naming the first bad field. Text is made
encodable (a lone surrogate becomes U+FFFD) so no reply built from a record can fail.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

from stabledreamer_protocol.codec import clean_text
from stabledreamer_protocol.messages import ID_RE, STATES

from ..errors import StableDreamerError

KINDS = ("reconstruct", "demo", "generate")
MAX_INT64 = 2**63 - 1
PLAIN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
"""A file inside the job folder (``target.ply``, ``init.npz``): no folders, no leading dot."""
RESULT_FILE_KEYS = {"name", "size", "sha256", "media_type"}


class RecordError(StableDreamerError):
    """A job record that cannot be used; the message names the field."""


def parse_record(data: Any, folder_job: str | None = None):
    """The record in ``data`` (what ``json.loads`` gave). ``folder_job``: the job id its folder
    names; the record must name the same one."""
    from .jobs import JobRecord

    if not isinstance(data, dict):
        raise RecordError(f"the record is a JSON {type(data).__name__}, not an object")
    out: dict[str, Any] = {}
    for f in dataclasses.fields(JobRecord):
        has_default = not (
            f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        )
        if f.name not in data:
            if not has_default:
                raise RecordError(f"{f.name!r} is missing")
            continue
        out[f.name] = _check(f.name, f.type, data[f.name])
    if ID_RE.fullmatch(out["job"]) is None or len(out["job"]) > 64:
        raise RecordError(f"'job' {out['job'][:40]!r} is not a job id")
    if folder_job is not None and out["job"] != folder_job:
        raise RecordError(f"'job' {out['job'][:40]!r} is not its folder's job {folder_job!r}")
    if out["kind"] not in KINDS:
        raise RecordError(f"'kind' {out['kind'][:40]!r} is not one of {', '.join(KINDS)}")
    if out.get("state", "queued") not in STATES:
        raise RecordError(f"'state' {out['state'][:40]!r} is not one of {', '.join(STATES)}")
    for name in ("target_file", "init_file"):
        value = out.get(name, "")
        if value and PLAIN_NAME.fullmatch(value) is None:
            raise RecordError(f"{name!r} {value[:40]!r} is not a plain file name")
    if out.get("mode", "") not in ("", "refine", "continue"):
        raise RecordError(f"'mode' {out['mode'][:40]!r} is not refine or continue")
    parent = out.get("parent", "")
    if parent and (ID_RE.fullmatch(parent) is None or len(parent) > 64):
        raise RecordError(f"'parent' {parent[:40]!r} is not a job id")
    if bool(parent) != bool(out.get("mode", "")):
        raise RecordError("'parent' and 'mode' go together")
    if out.get("result") is not None:
        out["result"] = _check_result(out["result"])
    if out.get("state") == "done" and out.get("result") is None:
        raise RecordError("the job is done but has no result")
    rec = JobRecord(**out)
    _probe(rec)
    return rec


def _probe(rec) -> None:
    """Every reply built from ``rec`` must encode: try them with the codec's own checks."""
    from stabledreamer_protocol import Jobs, ProtocolError, encode

    from . import views

    try:
        encode(views.job_state(rec, 0))
        encode(Jobs(jobs=[views.job_info(rec)]))
        if rec.state == "done":
            encode(views.result(rec))
    except (ProtocolError, TypeError, ValueError) as e:
        raise RecordError(f"a reply about this job would not encode: {e}") from None


def _check(name: str, declared: str, value: Any) -> Any:
    nullable = declared.endswith("| None")
    base = declared.removesuffix("| None").strip()
    if value is None:
        if nullable:
            return None
        raise RecordError(f"{name!r} is null")

    def fail(what: str):
        raise RecordError(f"{name!r} must be {what}, not {type(value).__name__}")

    if base == "str":
        if not isinstance(value, str):
            fail("a string")
        return clean_text(value)
    if base == "int":
        if not isinstance(value, int) or isinstance(value, bool):
            fail("an integer")
        if not 0 <= value <= MAX_INT64:
            raise RecordError(f"{name!r} = {value} is outside [0, 2^63)")
        return value
    if base == "float":
        if not isinstance(value, int | float) or isinstance(value, bool):
            fail("a number")
        if not math.isfinite(value) or value < 0:
            raise RecordError(f"{name!r} = {value} is not a finite time")
        return float(value)
    if base == "bool":
        if not isinstance(value, bool):
            fail("true or false")
        return value
    if base.startswith("dict"):
        if not isinstance(value, dict):
            fail("an object")
        return _clean_json(value)
    raise RecordError(f"{name!r} has a type this reader does not know ({declared})")


def _clean_json(value: Any) -> Any:
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, dict):
        return {clean_text(str(k)): _clean_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean_json(v) for v in value]
    return value


def _check_result(result: dict) -> dict:
    files = result.get("files")
    if not isinstance(files, list):
        raise RecordError("'result.files' must be a list")
    for i, f in enumerate(files):
        if not isinstance(f, dict) or set(f) != RESULT_FILE_KEYS:
            raise RecordError(f"'result.files[{i}]' must have exactly {sorted(RESULT_FILE_KEYS)}")
        if not isinstance(f["name"], str) or PLAIN_NAME.fullmatch(f["name"]) is None:
            raise RecordError(f"'result.files[{i}].name' is not a plain file name")
        size = f["size"]
        if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= MAX_INT64:
            raise RecordError(f"'result.files[{i}].size' is not a size")
        if not isinstance(f["sha256"], str) or re.fullmatch(r"[0-9a-f]{64}", f["sha256"]) is None:
            raise RecordError(f"'result.files[{i}].sha256' is not a SHA-256")
        if not isinstance(f["media_type"], str) or len(f["media_type"]) > 128:
            raise RecordError(f"'result.files[{i}].media_type' is not a media type")
    chunk = result.get("chunk_size", 1 << 20)
    if not isinstance(chunk, int) or isinstance(chunk, bool) or not 1 <= chunk <= 1 << 26:
        raise RecordError("'result.chunk_size' is not a chunk size")
    if not isinstance(result.get("metrics", {}), dict):
        raise RecordError("'result.metrics' must be an object")
    return result
