"""Ray workers for the service's pool (``serve --ray``): the only module that imports Ray.

:class:`RayLauncher` connects to (or starts) a Ray cluster and starts one actor per worker,
asking for ``gpus_per_job`` GPUs and ``cpus_per_job`` CPUs (Ray sets the actor's
``CUDA_VISIBLE_DEVICES``); the actor connects back (``relay``) and runs the local worker's code
(``actor.run_worker``). To the pool a worker is ``(process, conn)`` as for a local process:
:class:`ActorProcess` has ``pid``, ``is_alive()``, ``exitcode``, ``kill()`` and ``join()``, and the
conn is the service end of a local pipe that the relay feeds.

The actor's task starts the worker process and returns its exit code (``actor.supervise``); a
thread per actor waits on the task's ``ObjectRef`` and then ends the actor. Ray raises
``ActorDiedError`` instead when the actor's process died (the worker dies with it) or its node
was lost. A lost node is not the job's fault:
:meth:`RayLauncher.lost` says so to the service, which resumes the job without counting a crash
(at most ``MAX_NODE_LOSSES`` times per job, so a job that takes its nodes down still ends).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import Counter

import ray

from ...errors import ConfigError, StableDreamerError
from .relay import VERDICT_WAIT_S, Link, Rendezvous
from .settings import FarmConfig

log = logging.getLogger("stabledreamer.farm")

MAX_NODE_LOSSES = 5
"""A job whose node is lost this many times more is treated as the crash it may be causing."""
DIED = -1
"""``exitcode`` of a worker whose actor died (Ray does not say how; its log line does)."""
KILLED = -9
"""``exitcode`` of an actor the pool killed."""
NODE_VERDICT_S = float(os.environ.get("STABLEDREAMER_RAY_NODE_VERDICT_S", "3"))
"""When an actor died and Ray has not (yet) declared its node dead, how long to watch the node
before calling the death the job's crash: a lost node's workers can die (their raylet gone)
before Ray's health checks mark the node dead. A crash on a healthy node waits this long before
its job is queued again (a standby then takes it); a node Ray declares dead later than this
counts as the job's crash (raise it where the cluster's health checks are slower)."""


@ray.remote(max_restarts=0, max_task_retries=0)
class FarmWorker:
    """One worker process on some node of the cluster."""

    def run(self, address, authkey: bytes, token: str) -> int:
        from stabledreamer.server.farm.actor import supervise

        return supervise(address, authkey, token, ray.get_runtime_context().get_node_id())


class ActorProcess:
    """A Ray actor, seen by the pool as a process."""

    def __init__(self, actor, ref, link: Link, forget=None) -> None:
        self.actor, self.ref, self.link = actor, ref, link
        self._forget = forget or (lambda link: link.close())
        """Drops a link whose worker never connected (``Rendezvous.forget``)."""
        self.exitcode: int | None = None
        self.lost_node = ""
        """Why the job was lost with its node ("" when it was not)."""
        self.died = ""
        """Ray's account of the actor's end (its first line)."""
        self._done = threading.Event()
        self._lock = threading.Lock()
        threading.Thread(target=self._watch, name="farm-watch", daemon=True).start()

    @property
    def pid(self) -> int | None:
        """The worker process's id on its node (None until it connected; ``link.hello`` also
        has its actor's)."""
        return self.link.hello.pid if self.link.hello else None

    def is_alive(self) -> bool:
        return not self._done.is_set()

    def join(self, timeout: float | None = None) -> None:
        self._done.wait(timeout)

    def kill(self) -> None:
        """End the actor; the pool does not wait for Ray to confirm (a node that is gone but not
        yet known to be gone would keep it waiting)."""
        self._end_actor()
        self.link.close()
        self._finish(KILLED)

    def _end_actor(self) -> None:
        try:
            ray.kill(self.actor, no_restart=True)
        except Exception as e:  # already gone, or Ray is shutting down
            log.debug("ray.kill: %s", e)

    def _finish(self, code: int) -> None:
        with self._lock:
            if self._done.is_set():
                return
            self.exitcode = code
            self._done.set()
        self.link.verdict.set()

    def _drained(self) -> None:
        """Wait until the relay has passed on everything the worker said (its connection ended)
        before the pool may see it gone: its last words (``JobDone``) must not be lost. A
        connection that does not end (a node cut off without a reset) is closed after
        ``VERDICT_WAIT_S``."""
        if not self.link.connected.is_set():
            self._forget(self.link)
        elif not self.link.remote_closed.wait(VERDICT_WAIT_S):
            self.link.close()
            self.link.remote_closed.wait(VERDICT_WAIT_S)

    def _watch(self) -> None:
        try:
            code = ray.get(self.ref)
            self.died = f"its worker process ended (exit code {code})"
            self._end_actor()  # its task is over: the actor (and its GPU) is released
        except ray.exceptions.RayActorError as e:
            code = DIED
            text = str(e)
            lines = text.splitlines() or [""]
            why = [ln for ln in lines if "dead because" in ln or "died because" in ln]
            self.died = (why or lines)[0].strip()
            self.lost_node = self._node_lost(text)
        except Exception as e:  # Ray itself failed (a shutdown): the worker is gone to us
            code = DIED
            self.died = f"{type(e).__name__}: {e}".splitlines()[0]
        if code != 0 and not self._done.is_set():  # (not one the pool killed)
            hello = self.link.hello
            where = f"on {hello.host} (pid {hello.pid})" if hello else "(not connected yet)"
            log.warning("Ray worker %s ended: %s", where, self.lost_node or self.died)
        self._drained()
        self._finish(code)

    def _node_lost(self, text: str) -> str:
        hello = self.link.hello
        where = f"the Ray node {hello.host} ({hello.node_id[:8]})" if hello else "its Ray node"
        if "its node has died" in text:
            return f"{where} running it was lost"
        if hello is None:
            return ""
        deadline = time.monotonic() + NODE_VERDICT_S
        while True:
            try:
                alive = {n["NodeID"]: n["Alive"] for n in ray.nodes()}
            except Exception:
                return ""
            if not alive.get(hello.node_id, True):
                return f"{where} running it was lost"
            if time.monotonic() >= deadline:
                return ""
            time.sleep(0.25)


class RayLauncher:
    """Starts the pool's workers as Ray actors (``WorkerPool(launcher=...)``)."""

    def __init__(self, cfg: FarmConfig) -> None:
        self.cfg = cfg
        self._started_ray = False
        if not ray.is_initialized():
            kw = {"include_dashboard": False} if cfg.address == "local" else {}
            try:
                ray.init(
                    address=None if cfg.address == "auto" else cfg.address,
                    namespace="stabledreamer",
                    logging_level=logging.WARNING,
                    log_to_driver=True,
                    **kw,
                )
            except (ConnectionError, ValueError, RuntimeError) as e:
                raise StableDreamerError(f"--ray {cfg.address}: cannot join Ray: {e}") from None
            self._started_ray = True
        self.capacity = self._capacity()
        host, port = self._listen_address()
        try:
            self.rendezvous = Rendezvous(host, port)
        except OSError as e:
            raise ConfigError(f"--ray-listen {host}:{port}: cannot listen there ({e})") from None
        self._losses: Counter[str] = Counter()
        self._standby: list[tuple[ActorProcess, object]] = []
        res = ray.cluster_resources()
        log.info(
            "Ray cluster: %d node(s), %g GPU(s), %g CPU(s); up to %d job(s) at once, %g GPU "
            "each; workers connect to %s:%d",
            len([n for n in ray.nodes() if n["Alive"]]),
            res.get("GPU", 0),
            res.get("CPU", 0),
            self.capacity,
            cfg.gpus_per_job,
            *self.rendezvous.address,
        )

    def _capacity(self) -> int:
        res = ray.cluster_resources()
        if self.cfg.gpus_per_job > 0:
            if res.get("GPU", 0) < self.cfg.gpus_per_job:
                raise ConfigError(
                    f"the Ray cluster has {res.get('GPU', 0):g} GPU(s), a job asks for "
                    f"{self.cfg.gpus_per_job:g}: add GPU nodes, or run jobs on CPUs with "
                    "--ray-gpus-per-job 0"
                )
            fit = int(res["GPU"] // self.cfg.gpus_per_job)
        else:
            fit = int(res.get("CPU", 1) // max(self.cfg.cpus_per_job, 1e-3))
        return self.cfg.jobs or max(1, fit)

    def _listen_address(self) -> tuple[str, int]:
        if self.cfg.listen:
            host, _, port = self.cfg.listen.rpartition(":")
            return host or "0.0.0.0", int(port)
        here = ray.util.get_node_ip_address()
        others = [n for n in ray.nodes() if n["Alive"] and n["NodeManagerAddress"] != here]
        # one machine: loopback; a cluster: this node's address, as Ray knows it
        return ("127.0.0.1" if not others else here), 0

    def start(self, *_slot) -> tuple[ActorProcess, object]:
        """A worker: ``(process, conn)``, like ``multiprocessing`` gives a local one. A standby
        (started earlier, torch imported by now) when there is one alive, then another standby
        is started: a job that lost its worker, or one queued behind a job, starts at once
        instead of waiting seconds for a new actor and its imports."""
        while self._standby:
            proc, conn = self._standby.pop(0)
            if proc.is_alive():
                break
            conn.close()  # it died waiting (its node was lost): never hand out a dead one
        else:
            proc, conn = self._new()
        self._refill()
        return proc, conn

    def _refill(self) -> None:
        while len(self._standby) < self.cfg.standby:
            self._standby.append(self._new())

    def _new(self) -> tuple[ActorProcess, object]:
        link = self.rendezvous.expect()
        actor = FarmWorker.options(
            num_gpus=self.cfg.gpus_per_job, num_cpus=self.cfg.cpus_per_job
        ).remote()
        ref = actor.run.remote(self.rendezvous.address, self.rendezvous.authkey, link.token)
        return ActorProcess(actor, ref, link, self.rendezvous.forget), link.local

    def lost(self, w) -> str | None:
        """Why ``w``'s job is not to blame for its end (its node was lost), or None."""
        why = getattr(w.process, "lost_node", "")
        if not why or w.job is None:
            return None
        self._losses[w.job] += 1
        if self._losses[w.job] > MAX_NODE_LOSSES:
            return None
        return why

    def close(self) -> None:
        for proc, conn in self._standby:
            proc.kill()
            conn.close()
        self._standby = []
        self.rendezvous.close()
        if self._started_ray:
            ray.shutdown()
