"""``serve --ray`` settings (no Ray here)."""

from __future__ import annotations

from dataclasses import dataclass

from ...errors import ConfigError


@dataclass(frozen=True)
class FarmConfig:
    address: str = "auto"
    """``auto``: the cluster this machine belongs to (``RAY_ADDRESS``, or one ``ray start``
    started here), else a new local Ray with this machine's GPUs; ``local``: always a new local
    Ray; ``HOST:PORT`` (or ``ray://HOST:PORT``): that cluster."""
    gpus_per_job: float = 1.0
    """GPUs each job's actor asks for (0: CPU jobs)."""
    cpus_per_job: float = 1.0
    listen: str = ""
    """``HOST:PORT`` where workers connect back to the service (``--ray-listen``); "": loopback
    when the whole cluster is this machine, else this machine's address as Ray knows it, on a
    free port."""
    jobs: int = 0
    """Jobs at once (0: as many as the cluster's GPUs allow, counted at start)."""
    standby: int = 1
    """Workers kept started beyond the pool's own (``--ray-standby``): each holds its GPU(s)
    while it waits, and makes a failover or the next queued job start at once."""

    def __post_init__(self) -> None:
        if not self.address.strip():
            raise ConfigError("--ray needs auto, local or a cluster address (HOST:PORT)")
        if min(self.gpus_per_job, self.cpus_per_job, self.jobs, self.standby) < 0:
            raise ConfigError("--ray-gpus-per-job, --ray-jobs and --ray-standby are >= 0")
        if self.listen:
            _, sep, port = self.listen.rpartition(":")
            if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
                raise ConfigError(f"--ray-listen {self.listen!r}: give HOST:PORT (PORT 0: any)")
