"""Job records under the state folder, the queue order, and a job's run configuration.

Layout of ``STATE/jobs/j-<id>/`` (the ``j-`` prefix keeps ids such as ``..`` harmless)::

    job.json        the record (JobRecord), rewritten atomically on every change
    target.<ext>    the uploaded target mesh (``.npz`` for vertex/face arrays)
    run/            the run folder (config, checkpoints, outputs) of ``run_reconstruction``

Uploaded files are first written into ``STATE/jobs/.upload-<random>/`` (off the service loop for
large uploads), which becomes the job's folder by a rename once the job is accepted. A folder
without ``job.json``, or a staging folder, is a submission that was interrupted before it was
recorded; it is removed on load. A record found ``running`` on load belonged to a killed
service: it goes back to ``queued`` and resumes from its last checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..atomic import DiskFullError, atomic_path, write_json
from ..errors import ConfigError  # noqa: F401  (the service and worker catch it from here)
from ..runs.folder import PROCEDURAL_DEMO  # noqa: F401  (its one home is the run folder)
from .records import RecordError, parse_record

log = logging.getLogger("stabledreamer.service")

RECORD = "job.json"
RUN = "run"
INIT_FILE = "init.npz"
STAGING_PREFIX = ".upload-"
"""Folders of uploads being written (``JobStore.stage``); removed on load if left over."""
ACTIVE_STATES = ("queued", "running")
DEFAULT_PRESET = "reconstruct"
FORBIDDEN_OVERRIDES = {
    "target": "the target comes with the submit (a client never names a file on the backend)",
    "preset": "the preset is the submit's preset field",
    "prompt": "the prompt is the submit's prompt field",
    "seed": "the seed is the submit's seed field",
    "init_from": "initial points come with the submit (init_points)",
    "deepfloyd_if.model": "the models are chosen when the service starts (serve --if-model)",
    "stable_diffusion.model": "the models are chosen when the service starts (serve --sd-model)",
}
"""Config keys a client may not set, with the reason."""


@dataclass
class JobRecord:
    job: str
    seq: int
    """Submission order (the queue is oldest first)."""
    digest: str
    """``Submit.digest()``: a resubmission with the same digest is harmless."""
    kind: str
    """``reconstruct`` (uploaded target), ``demo`` (the built-in object) or ``generate`` (text)."""
    preset: str
    seed: int
    overrides: dict[str, Any] = field(default_factory=dict)
    prompt: str = ""
    """``generate``: the prompt (and below, the negative prompt)."""
    negative: str = ""
    target_name: str = ""
    target_file: str = ""
    """File name of the uploaded target inside the job folder ("" for the demo)."""
    init_file: str = ""
    """``init.npz`` when a text job starts from the submit's ``init_points`` ("" otherwise)."""
    preview_points: int | None = None
    state: str = "queued"
    stage: str = ""
    step: int = 0
    total: int = 0
    message: str = ""
    error_code: str = ""
    result: dict[str, Any] | None = None
    """``{"files": [...], "chunk_size": n, "metrics": {...}}`` once done."""
    created: float = field(default_factory=time.time)
    updated: float = field(default_factory=time.time)
    starts: int = 0
    """How many times a worker started (or resumed) this job."""
    crashes: int = 0
    """How many times its worker process died without reporting (each time it resumes)."""
    owner: str = ""
    """The CURVE public key (Z85) of the client that submitted it ("" without CURVE, or from
    before ownership: then only operators see it)."""
    fetched: bool = False
    """A client fetched a chunk of its result (the retention policy spares unfetched results)."""
    parent: str = ""
    """The job this one refines or continues ("" for a fresh job; ``followups``)."""
    mode: str = ""
    """``refine`` or ``continue`` with a parent, else ""."""
    steps: int = 0
    """With a parent: continue: the steps added; refine: the rerun stage's steps (0: the
    parent's)."""
    model_set: str = ""
    """Text jobs: the model set that makes it (``models.sets``), so its licence can be told."""
    wait_models: bool = False
    """Text jobs: wait for the set's download instead of failing when it is missing."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def link_or_copy(src: Path, dst: Path) -> None:
    """``dst`` as a hard link to ``src`` (instant, no space: both live under the state folder;
    the source is never rewritten in place), or a copy where links are not possible."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        with atomic_path(dst, needed=src.stat().st_size) as tmp:
            shutil.copyfile(src, tmp)


def job_dir_name(job: str) -> str:
    return f"j-{job}"


class JobStore:
    """Every job's record, in memory and on disk (``STATE/jobs``)."""

    def __init__(self, state_dir: str | os.PathLike) -> None:
        self.root = Path(state_dir) / "jobs"
        self.root.mkdir(parents=True, exist_ok=True)
        self.records: dict[str, JobRecord] = {}
        self._seq = 0
        self._sizes: dict[str, int] = {}
        self.unsaved: set[str] = set()
        """Jobs whose newest record is only in memory (the disk refused it)."""

    def load(self) -> list[JobRecord]:
        """Read every record; returns those that were running (now queued again). A record that
        cannot be used is set aside (``set_aside``) and never stops the others."""
        interrupted = []
        bad: list[tuple[Path, str]] = []
        for folder in sorted(self.root.iterdir()):
            if folder.name.startswith(STAGING_PREFIX):
                log.warning("removing %s: an upload interrupted before it was accepted", folder)
                shutil.rmtree(folder, ignore_errors=True)
                continue
            if not folder.is_dir() or not folder.name.startswith("j-"):
                continue
            path = folder / RECORD
            if not path.is_file():
                log.warning("removing %s: a submission interrupted before it was recorded", folder)
                shutil.rmtree(folder, ignore_errors=True)
                continue
            try:
                data = json.loads(path.read_bytes())
                rec = parse_record(data, folder.name[2:])
            except (ValueError, RecordError, OSError, RecursionError) as e:
                bad.append((folder, str(e)[:500]))
                continue
            if rec.state == "running":
                rec.state = "queued"
                rec.message = "interrupted; resumes from its last checkpoint"
                interrupted.append(rec)
                self.save(rec)
            self.records[rec.job] = rec
            self._seq = max(self._seq, rec.seq)
        for folder, why in bad:  # after the good ones, so their seq numbers are known
            self.set_aside(folder, why)
        self.records = dict(sorted(self.records.items(), key=lambda kv: kv[1].seq))
        return interrupted

    def set_aside(self, folder: Path, why: str) -> None:
        """Keep a bad record as ``job.json.bad`` for whoever wants to look, and list the job as
        failed with the reason (when its folder names a usable job id)."""
        path = folder / RECORD
        aside = folder / f"{RECORD}.bad"
        log.warning("job record %s is unusable (%s); set aside as %s", path, why, aside.name)
        try:
            os.replace(path, aside)
        except OSError as e:
            log.warning("could not rename %s (%s); ignoring the job", path, e)
            return
        job = folder.name[2:]
        rec = JobRecord(
            job=job,
            seq=self.next_seq(),
            digest="",
            kind="reconstruct",
            preset="",
            seed=0,
            target_name="(unreadable job record)",
            state="failed",
            error_code="job_failed",
            message=f"this job's record was unreadable and was set aside as {aside}: {why}",
        )
        try:
            rec = parse_record(rec.to_dict(), job)  # the folder name may not be a job id
        except RecordError:
            return
        self.save(rec)
        self.records[job] = rec

    def next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def dir(self, job: str) -> Path:
        return self.root / job_dir_name(job)

    def run_dir(self, job: str) -> Path:
        return self.dir(job) / RUN

    def get(self, job: str) -> JobRecord | None:
        return self.records.get(job)

    def create(self, rec: JobRecord, files: dict[str, bytes | memoryview]) -> None:
        """Write the uploaded files, then the record (the record last: see the module doc).
        On a full disk nothing is left behind and :class:`DiskFullError` says so."""
        self.adopt(rec, self.stage(files))

    def stage(self, files: dict[str, bytes | memoryview]) -> Path | None:
        """Write a submission's files into a fresh staging folder (``STATE/jobs/.upload-*``) and
        return it (None when there are no files). Touches nothing else of the store, so it may
        run on an upload thread while the service loop serves. On failure nothing is left."""
        if not files:
            return None
        folder = self.root / f"{STAGING_PREFIX}{uuid.uuid4().hex}"
        try:
            folder.mkdir(parents=True)
            for name, data in files.items():
                if isinstance(data, Path):  # a file of another job (a parent's state): linked
                    link_or_copy(data, folder / name)
                    continue
                with atomic_path(folder / name, needed=memoryview(data).nbytes) as tmp:
                    tmp.write_bytes(data)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return folder

    def adopt(self, rec: JobRecord, staged: Path | None) -> None:
        """Make a staged folder (``stage``) the job's folder and write its record, last. On a
        full disk nothing is left behind (the staged files neither) and the error says so."""
        folder = self.dir(rec.job)
        try:
            if folder.exists():
                shutil.rmtree(folder)
            if staged is None:
                folder.mkdir(parents=True)
            else:
                os.replace(staged, folder)  # the same file system: a rename
            rec.updated = time.time()
            write_json(folder / RECORD, rec.to_dict())
        except (DiskFullError, OSError):
            shutil.rmtree(folder, ignore_errors=True)
            if staged is not None:
                shutil.rmtree(staged, ignore_errors=True)
            raise
        self.records[rec.job] = rec

    def save(self, rec: JobRecord) -> None:
        """Write the record; when the disk refuses (full), keep it in memory and say so once:
        ``retry_unsaved`` writes it when there is room. Never raises."""
        rec.updated = time.time()
        try:
            write_json(self.dir(rec.job) / RECORD, rec.to_dict())
        except (DiskFullError, OSError) as e:
            if rec.job not in self.unsaved:
                log.error("job %s: its record could not be saved (%s); retrying", rec.job, e)
            self.unsaved.add(rec.job)
            return
        self.unsaved.discard(rec.job)

    def retry_unsaved(self) -> None:
        for job in list(self.unsaved):
            rec = self.records.get(job)
            if rec is None:
                self.unsaved.discard(job)
            else:
                self.save(rec)

    def delete(self, job: str) -> None:
        self.records.pop(job, None)
        self._sizes.pop(job, None)
        self.remove_files(job)

    def size(self, job: str) -> int:
        """Bytes the job's folder holds (measured once: asked only of finished jobs). A file
        hard-linked into several jobs (a follow-up's ``parent/``) counts its share in each, so
        the jobs' sizes add up to the disk they use, not a multiple of it."""
        if job not in self._sizes:
            total = 0.0
            for path in self.dir(job).rglob("*"):
                try:
                    if path.is_file() and not path.is_symlink():
                        st = path.stat()
                        total += st.st_size / max(st.st_nlink, 1)
                except OSError:
                    pass
            self._sizes[job] = round(total)
        return self._sizes[job]

    def remove_files(self, job: str) -> None:
        folder = self.dir(job)
        # Remove the record first so a crash half-way leaves a folder that load() cleans up.
        (folder / RECORD).unlink(missing_ok=True)
        shutil.rmtree(folder, ignore_errors=True)

    def queued(self) -> list[JobRecord]:
        return [r for r in self.records.values() if r.state == "queued"]

    def active_count(self) -> int:
        return sum(r.state in ACTIVE_STATES for r in self.records.values())

    def queue_position(self, job: str) -> int | None:
        for i, r in enumerate(self.queued()):
            if r.job == job:
                return i
        return None


# --- configuration (imports torch: only the service's submit path and the worker use it) -------


def build_config(
    preset: str,
    overrides: dict[str, Any],
    seed: int,
    target: str,
    prompt: str = "",
    negative: str = "",
    models: dict[str, str] | None = None,
    init_from: str = "",
    model_set: str | None = None,
):
    """The ``RunConfig`` of a job, through ``presets.resolve`` (the path the CLI takes too): the
    preset, then the client's overrides, then what only the submit or the service decides: seed,
    target, prompt, the models the service was started with (``{"if": ..., "sd": ...}``; a client
    never names a path on the backend), and the initial point cloud the submit sent
    (``init_from``, a file the worker wrote), and the model set (``models.sets``; None: the
    preset's default)."""
    from ..presets import resolve

    fixed: dict[str, Any] = {"seed": seed, "target": target, "prompt": prompt}
    if init_from:
        fixed["init_from"] = init_from
    if negative:
        fixed["deepfloyd_if.negative_prompt"] = fixed["stable_diffusion.negative_prompt"] = negative
    for key, section in (("if", "deepfloyd_if"), ("sd", "stable_diffusion")):
        if models and models.get(key):
            fixed[f"{section}.model"] = models[key]
    return resolve(
        preset, overrides, fixed=fixed, forbidden=FORBIDDEN_OVERRIDES, models=model_set or None
    )
