"""A job record as the protocol's events show it: ``job_state``, ``result``, a ``jobs`` entry."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np

from stabledreamer_protocol import (
    PROTOCOL_VERSION,
    ErrorCode,
    Fetch,
    Hello,
    JobInfo,
    Jobs,
    JobState,
    Limits,
    ProtocolError,
    Result,
    ResultChunk,
    ResultFile,
)

from .jobs import JobRecord


def job_state(rec: JobRecord, queue_position: int | None, re: str | None = None) -> JobState:
    return JobState(
        job=rec.job,
        re=re,
        state=rec.state,
        stage=rec.stage,
        step=rec.step,
        total=rec.total,
        queue_position=queue_position if rec.state == "queued" else None,
        seed=rec.seed,
        message=rec.message,
    )


def result(rec: JobRecord) -> Result:
    r = rec.result or {}
    return Result(
        job=rec.job,
        files=[ResultFile(**f) for f in r.get("files", [])],
        chunk_size=r.get("chunk_size", 1 << 20),
        metrics=r.get("metrics", {}),
    )


def hello(re: str, device: str, models: list[str], features: list[str], limits: Limits) -> Hello:
    """The backend's answer to ``hello`` (less ``queue_length``)."""
    from .. import __version__
    from ..presets import PRESETS
    from .jobs import DEFAULT_PRESET

    return Hello(
        re=re,
        protocol=PROTOCOL_VERSION,
        software=f"stabledreamer {__version__}",
        device=device,
        models=["oracle", *models],
        presets=sorted(PRESETS),
        default_preset=DEFAULT_PRESET,
        features=features,
        limits=limits.to_dict(),
    )


def chunk_of(rec: JobRecord, msg: Fetch) -> tuple[ResultFile, int, int]:
    """The file, offset and size of the chunk a ``fetch`` asks for, or the refusal."""
    if rec.state != "done" or rec.result is None:
        raise ProtocolError(ErrorCode.NOT_READY, f"job {rec.job} is {rec.state}, not done")
    res = result(rec)
    try:
        info = res.file(msg.file)
    except KeyError:
        raise ProtocolError(
            ErrorCode.BAD_FIELD, f"job {rec.job} has no result file {msg.file!r}"
        ) from None
    cs = res.chunk_size
    if msg.index >= max(info.chunks(cs), 1) or (info.size == 0):
        raise ProtocolError(
            ErrorCode.BAD_FIELD,
            f"{msg.file} has {info.chunks(cs)} chunks; there is no chunk {msg.index}",
        )
    offset = msg.index * cs
    return info, offset, min(cs, info.size - offset)


def result_chunk(
    rec: JobRecord, msg: Fetch, info: ResultFile, offset: int, data: bytes
) -> ResultChunk:
    return ResultChunk(
        re=msg.id,
        job=rec.job,
        file=info.name,
        index=msg.index,
        offset=offset,
        sha256=hashlib.sha256(data).hexdigest(),
        data=np.frombuffer(data, dtype=np.uint8),
    )


def job_info(rec: JobRecord, queue_position: int | None = None, mine: bool = True) -> JobInfo:
    what = rec.prompt if rec.kind == "generate" else f"[{rec.kind}] {rec.target_name}"
    return JobInfo(
        job=rec.job,
        state=rec.state,
        stage=rec.stage,
        step=rec.step,
        total=rec.total,
        prompt=what[:2000],
        created=rec.created,
        queue_position=queue_position if rec.state == "queued" else None,
        seed=rec.seed,
        parent=rec.parent or None,
        mode=rec.mode or None,
        mine=mine,
        models=rec.model_set,
    )


def listing(store, access, peer, re, offset: int, limit, active: bool, limits: Limits) -> Jobs:
    """The ``jobs`` reply to ``list_jobs``: a page of the jobs ``peer`` may see (``active``:
    only those queued or running), each with its queue position and whether it is the peer's
    own, and the count of other keys' queued or running jobs."""
    positions = {r.job: i for i, r in enumerate(store.queued())}
    recs, others = [], 0
    for r in store.records.values():
        mine = r.owner == peer.owner
        if not mine and r.state in ("queued", "running"):
            others += 1
        if access.may(peer, r) and (not active or r.state in ("queued", "running")):
            recs.append(r)

    def info(r: JobRecord) -> JobInfo:
        return job_info(r, positions.get(r.job), r.owner == peer.owner)

    page = jobs_page(recs, offset, limit, limits, re, info)
    page.others_active = others
    return page


HEADER_MARGIN = 2048
"""Header bytes a ``jobs`` page leaves for everything but its entries (the envelope is ~150)."""


def jobs_page(
    recs: list[JobRecord],
    offset: int,
    limit: int | None,
    limits: Limits,
    re: str | None = None,
    info_of=job_info,
) -> Jobs:
    """One page of ``recs`` from ``offset``: at most ``limit`` (or ``max_jobs_listed``) entries,
    and no more than fit the header limit, whatever the entries hold."""
    most = min(limit or limits.max_jobs_listed, limits.max_jobs_listed)
    budget = limits.max_header_bytes - HEADER_MARGIN
    page: list[JobInfo] = []
    size = 0
    for rec in recs[offset : offset + most]:
        info = info_of(rec)
        while (n := _entry_bytes(info)) > budget and info.prompt:
            info.prompt = info.prompt[: len(info.prompt) // 2]  # only under a tiny header limit
        if page and size + n > budget:
            break
        page.append(info)
        size += n
    end = offset + len(page)
    more = end < len(recs)
    return Jobs(re=re, jobs=page, offset=offset, total=len(recs), next=end if more else None)


def _entry_bytes(info: JobInfo) -> int:
    text = json.dumps(info.to_dict(), ensure_ascii=False, separators=(",", ":"))
    return len(text.encode("utf-8", "replace")) + 1


def json_safe(obj: Any) -> Any:
    """Metrics as JSON can carry them: non-finite floats become null, numpy scalars plain."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def summary(metrics: dict[str, Any]) -> str:
    """One line for the log: PSNR (when measured) and the Gaussian count."""
    psnr = metrics.get("psnr_heldout")
    text = f"{metrics.get('gaussians', '?')} Gaussians"
    if isinstance(psnr, int | float):
        text = f"PSNR {psnr:.2f} dB, " + text
    return text
