"""The service's settings (``stabledreamer serve`` options)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from stabledreamer_protocol import DEFAULT_LIMITS, Limits

from .farm.settings import FarmConfig
from .retention import RetentionPolicy
from .uploads import OFFLOAD_BYTES


@dataclass
class ServiceConfig:
    bind: str
    state: Path
    curve: bool = True
    keys: Path | None = None
    limits: Limits = DEFAULT_LIMITS
    max_running: int | None = None
    """Jobs running at once at most (None: one per worker; 0: none start, for tests)."""
    workers: int = 1
    """Worker processes, each running one job at a time (``serve --workers N``; CPU slots)."""
    standby: int = 0
    """Spare local worker processes kept started (``serve --standby``, ``pool.py``): a lost
    worker's job resumes on one at once. 0 by default: each costs an idle Python with torch
    (a few hundred MB) for a rare event; a Ray cluster has its own (``--ray-standby``)."""
    gpus: list[str] | None = None
    """One worker per GPU (``serve --gpus``): the CUDA device each alone sees; overrides
    ``workers``."""
    preview_points: int = 100_000
    """Default and largest preview size, in Gaussians."""
    preview_interval_s: float = 0.5
    stop_timeout_s: float = 60.0
    """On SIGTERM: how long a running job may take to checkpoint and exit before it is killed."""
    models: list[str] = field(default_factory=list)
    """Guidance models named on the command line, as "if:X" / "sd:Y" (text jobs use them)."""
    model_set: str = "if-sd"
    """The model set of a text job whose submit names none (``serve --models``)."""
    prewarm: bool = True
    """Start every worker (torch imported) before a job needs it, so a job starts at once."""
    cancel_grace_s: float = 5.0
    """How long a cancelled job's worker may take to stop at its next step (then it is kept,
    models loaded) before it is killed (then a fresh process takes its place)."""
    stall_s: float = 30.0
    """A running job's worker silent this long (no heartbeat; it sends one a second from a
    thread, whatever the job does) is marked stalled; cancel and shutdown then kill it at once."""
    handshake_s: float = 5.0
    """A connection must finish its handshake within this (libzmq's default is 30 s). A CURVE
    handshake takes milliseconds on loopback or a LAN; 5 s leaves room for a slow link."""
    upload_offload_bytes: int = OFFLOAD_BYTES
    """Submits with this many buffer bytes or more are checked and written on an upload thread,
    so they never stall the loop that answers other clients (``uploads.py``)."""
    retention: RetentionPolicy = field(default_factory=RetentionPolicy)
    """Which finished jobs are deleted (``retention.py``)."""
    farm: FarmConfig | None = None
    """farm seam: run jobs on a Ray cluster (``serve --ray``; ``farm/``); None: local workers."""

    def model_ids(self) -> dict[str, str]:
        """{"if": ..., "sd": ...} from ``serve --if-model/--sd-model`` (listed as "if:X")."""
        return dict(m.split(":", 1) for m in self.models if ":" in m)


def resolve_gpus(spec: str) -> list[str]:
    """``serve --gpus``: ``auto`` (every GPU this process may use: the entries of
    ``CUDA_VISIBLE_DEVICES`` when it is set, else each device torch counts) or a comma-separated
    list of device indices or ``GPU-`` UUIDs, as ``CUDA_VISIBLE_DEVICES`` names them. Raises
    ``ConfigError`` when there is none."""
    import os

    from ..errors import ConfigError

    spec = spec.strip()
    if spec.lower() != "auto":
        gpus = [g.strip() for g in spec.split(",")]
        if not gpus or any(not g or not (g.isdigit() or g.startswith("GPU-")) for g in gpus):
            raise ConfigError(
                f"--gpus {spec!r}: give auto or device indices such as 0,1 (or GPU- UUIDs)"
            )
        if len(set(gpus)) != len(gpus):
            raise ConfigError(f"--gpus {spec!r} names a GPU twice: one worker per GPU")
        return gpus
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        gpus = [g.strip() for g in visible.split(",") if g.strip() and g.strip() != "-1"]
    else:
        import torch

        gpus = [str(i) for i in range(torch.cuda.device_count())]
    if not gpus:
        raise ConfigError(
            "--gpus auto: this machine has no GPU torch can use; on the CPU run several "
            "workers with --workers N"
        )
    return gpus
