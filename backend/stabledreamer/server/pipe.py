"""What the service and a worker process say to each other over their ``multiprocessing``
pipe: one small frozen dataclass per message kind (pickled; internal, never on the wire).

Service -> worker: :class:`RunJob`, then while that job runs any of :class:`CancelJob`,
:class:`StopJob` (checkpoint and stop: the service is shutting down, the job resumes later),
:class:`PreviewPoints`; then the next :class:`RunJob` (a worker runs one job after another,
keeping its models); :class:`ExitWorker` ends a worker. A cancel or stop that arrives after its
job ended is ignored.

Worker -> service: :class:`WorkerReady` (torch imported, waiting for a job), :class:`JobStarted`,
then :class:`ProgressReport`, :class:`PreviewFrame`, :class:`DebugFrame`, and :class:`LogLine` while
it runs, then :class:`WorkerStatus` and one final message: :class:`JobDone`, :class:`JobFailed`
(after which the worker ends: a failure releases everything), :class:`JobCancelled` or
:class:`JobStopped`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

# --- service -> worker --------------------------------------------------------------------------


@dataclass(frozen=True)
class JobSpec:
    """Everything a worker needs to run (or resume) one job."""

    job: str
    job_dir: str
    run_dir: str
    kind: str
    """``reconstruct``, ``demo`` or ``generate`` (``JobRecord.kind``)."""
    preset: str
    overrides: dict[str, Any]
    seed: int
    prompt: str = ""
    negative: str = ""
    models: dict[str, str] = field(default_factory=dict)
    """``{"if": ..., "sd": ...}`` from ``serve --if-model/--sd-model``."""
    model_set: str = ""
    """Text jobs: the model set (``JobRecord.model_set``; "" = the preset's default)."""
    target_file: str = ""
    init_file: str = ""
    preview_points: int = 0
    preview_interval_s: float = 0.5
    parent: str = ""
    """A refine or continue: the parent job (its state is in ``job_dir/parent``)."""
    mode: str = ""
    steps: int = 0


@dataclass(frozen=True)
class RunJob:
    spec: JobSpec


@dataclass(frozen=True)
class CancelJob:
    pass


@dataclass(frozen=True)
class StopJob:
    pass


@dataclass(frozen=True)
class PreviewPoints:
    n: int


@dataclass(frozen=True)
class ExitWorker:
    pass


# --- worker -> service --------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkerReady:
    device: str


@dataclass(frozen=True)
class WorkerStatus:
    """The worker's model cache, sent before each final message."""

    loads: int
    """Guidance models loaded since the process started (a warm job adds none)."""
    cached: tuple[str, ...] = ()
    """The guidances it keeps loaded (``deepfloyd_if``, ``stable_diffusion``)."""


@dataclass(frozen=True)
class JobStarted:
    resumed: bool


@dataclass(frozen=True)
class ProgressReport:
    """The fields of the protocol's ``progress`` event (less the job)."""

    stage: str
    step: int
    total: int
    losses: dict[str, float]
    num_gaussians: int
    timestep: float | None
    elapsed_s: float
    eta_s: float


@dataclass(frozen=True, eq=False)
class PreviewFrame:
    stage: str
    step: int
    total_gaussians: int
    means: np.ndarray
    log_scales: np.ndarray
    quats: np.ndarray
    rgb: np.ndarray
    opacities: np.ndarray


@dataclass(frozen=True, eq=False)
class DebugFrame:
    """The fields of the protocol's ``debug_image`` event (less the job)."""

    stage: str
    step: int
    timestep: float | None
    labels: list[str]
    image: np.ndarray


@dataclass(frozen=True)
class LogLine:
    level: int
    text: str


@dataclass(frozen=True)
class Heartbeat:
    """Sent by a thread of the worker every ``HEARTBEAT_S`` whatever the job is doing: a kernel
    build or a model download makes no progress but still beats; a stopped or hung process
    does not."""


HEARTBEAT_S = 1.0


@dataclass(frozen=True)
class JobDone:
    metrics: dict[str, Any]
    manifest: dict[str, Any]


@dataclass(frozen=True)
class JobFailed:
    code: str
    """A protocol error code: ``job_failed``, a user error's own code, ``out_of_memory`` or
    ``internal``."""
    message: str
    needed_bytes: int = 0
    """``disk_full``: the space the failed write wanted (0: unknown)."""


@dataclass(frozen=True)
class JobCancelled:
    pass


@dataclass(frozen=True)
class JobStopped:
    pass


FINAL = (JobDone, JobFailed, JobCancelled, JobStopped)
"""The messages that end a worker's job."""
