"""The service's settings (``stabledreamer serve`` options)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from stabledreamer_protocol import DEFAULT_LIMITS, Limits

from .retention import RetentionPolicy
from .uploads import OFFLOAD_BYTES


@dataclass
class ServiceConfig:
    bind: str
    state: Path
    curve: bool = True
    keys: Path | None = None
    limits: Limits = DEFAULT_LIMITS
    max_running: int = 1
    """Training jobs at once (one on the GPU by default)."""
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
    """Keep one idle worker with torch imported, so a job starts at once."""
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

    def model_ids(self) -> dict[str, str]:
        """{"if": ..., "sd": ...} from ``serve --if-model/--sd-model`` (listed as "if:X")."""
        return dict(m.split(":", 1) for m in self.models if ":" in m)
