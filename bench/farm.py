"""Local workers vs Ray workers: submit-to-start latency on an idle worker, and failover time.

For each mode a real ``stabledreamer serve`` subprocess (loopback, CURVE off) runs tiny
reconstruction jobs (the ``smoke`` preset on an octahedron, a checkpoint every 2 steps):

- ``local``: ``serve --standby 1`` (one long-lived worker process, and one spare started so a
  lost worker is replaced at once, as Ray's default ``--ray-standby 1`` does); ``--local-standby
  0`` measures the default service, which starts a fresh process after a loss;
- ``ray``: ``serve --ray ADDRESS`` on a simulated local cluster (``ray.cluster_utils``: a head
  without GPUs and two nodes with one declared GPU each, fast node health checks).

Measured at the client:

- **start**: submit -> the job's first ``progress`` event (its first step done), on an idle
  worker (a warm-up job ran first, then the service idles ``--idle-s`` so its spare is ready);
  also submit -> ``running`` (the scheduler's part);
- **failover**: SIGKILL the job's worker mid-job (local: its process; Ray: the actor's process)
  -> the job's first ``progress`` after it was queued again, i.e. running again from its
  checkpoint; for Ray also the loss of the job's whole node.

    .venv/bin/python bench/farm.py [--modes local,ray] [--repeats 2] [--idle-s 25]
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "server"))

from server_helpers import FAST, TARGET, workers_of  # noqa: E402

from stabledreamer_protocol import JobState, Progress  # noqa: E402
from stabledreamer_protocol.client import Client, ResultDownloaded  # noqa: E402

OVERRIDES = {**FAST, "checkpoint_every": 2}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Serve:
    def __init__(self, state: Path, *extra: str) -> None:
        self.endpoint = f"tcp://127.0.0.1:{free_port()}"
        self.log_path = state.parent / f"{state.name}.log"
        state.parent.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "stabledreamer", "serve", "--bind", self.endpoint,
               "--no-curve", "--state", str(state), *extra]  # fmt: skip
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT)

    def client(self) -> Client:
        c = Client(self.endpoint).connect()
        deadline = time.monotonic() + 120
        while True:
            try:
                c.handshake(timeout_s=2)
                return c
            except Exception:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError(self.log()) from None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self._log.close()


def submit(c: Client, steps: int, seed: int = 1) -> str:
    return c.submit(target_format="ply", target_file=TARGET, preset="smoke", seed=seed,
                    overrides={**OVERRIDES, "reconstruct.steps": steps})  # fmt: skip


def wait(c: Client, pred, timeout_s: float = 300):
    hit = c.wait_for(pred, timeout_s)
    if hit is None:
        raise RuntimeError("timed out")
    return hit


def done(c: Client, job: str) -> None:
    wait(c, lambda e: isinstance(e, ResultDownloaded) and e.job == job)


def start_latency(c: Client) -> tuple[float, float]:
    t0 = time.perf_counter()
    job = submit(c, 4)
    wait(c, lambda e: isinstance(e, JobState) and e.job == job and e.state == "running")
    t_run = time.perf_counter() - t0
    wait(c, lambda e: isinstance(e, Progress) and e.job == job)
    t_first = time.perf_counter() - t0
    done(c, job)
    return t_run, t_first


def failover(c: Client, kill) -> tuple[float, int]:
    job = submit(c, 60, seed=2)
    wait(c, lambda e: isinstance(e, Progress) and e.job == job and e.step >= 6)
    t0 = time.perf_counter()
    kill(job)
    seen = []

    def pred(e) -> bool:
        if isinstance(e, JobState) and e.job == job and e.state == "queued" and e.message:
            seen.append(e)
            return False
        return bool(seen) and isinstance(e, Progress) and e.job == job

    first = wait(c, pred)
    dt = time.perf_counter() - t0
    done(c, job)
    return dt, first.step


def local_worker_of(serve: Serve, job: str) -> int:
    """The pid of the local worker process running ``job`` (the service logs it)."""
    pid = int(re.findall(rf"job {job} started on worker \d+ \(pid (\d+)", serve.log())[-1])
    assert pid in workers_of(serve.proc.pid), (pid, workers_of(serve.proc.pid))
    return pid


def ray_worker_of(serve: Serve, job: str) -> tuple[int, str]:
    """(actor pid, node id prefix) of the Ray worker running ``job`` (from its log line)."""
    pattern = rf"job {job}: runs on Ray node \S+ \((\w+)\), pid \d+, actor pid (\d+)"
    node, actor_pid = re.findall(pattern, serve.log())[-1]
    return int(actor_pid), node


def cluster():
    from ray.cluster_utils import Cluster

    node = {"num_cpus": 1, "num_gpus": 1, "object_store_memory": 80 * 2**20}
    c = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "num_gpus": 0, "object_store_memory": 80 * 2**20,
        "include_dashboard": False,
        "_system_config": {"health_check_period_ms": 500, "health_check_failure_threshold": 3,
                           "health_check_initial_delay_ms": 0},
    })  # fmt: skip
    c.gpu_nodes = [c.add_node(**node), c.add_node(**node)]
    c.wait_for_nodes()
    return c


def run_mode(mode: str, repeats: int, idle_s: float, tmp: Path, standby: int = 1) -> dict:
    ray_cluster = cluster() if mode == "ray" else None
    extra = ("--ray", ray_cluster.address) if ray_cluster else ("--standby", str(standby))
    serve = Serve(tmp / mode, *extra)
    out: dict = {"start_run": [], "start_first": [], "failover": [], "node": None}
    try:
        with serve.client() as c:
            done(c, submit(c, 2))  # warm-up: imports, caches
            for _ in range(repeats):
                time.sleep(idle_s)  # the spare worker gets ready
                run, first = start_latency(c)
                out["start_run"].append(run)
                out["start_first"].append(first)
            for _ in range(repeats):
                time.sleep(idle_s)
                if ray_cluster is None:

                    def kill(job: str) -> None:
                        os.kill(local_worker_of(serve, job), signal.SIGKILL)
                else:

                    def kill(job: str) -> None:
                        os.kill(ray_worker_of(serve, job)[0], signal.SIGKILL)

                out["failover"].append(failover(c, kill))
            if ray_cluster is not None:
                time.sleep(idle_s)

                def lose_node(job: str) -> None:
                    _, node = ray_worker_of(serve, job)
                    (victim,) = [n for n in ray_cluster.gpu_nodes if n.node_id.startswith(node)]
                    ray_cluster.remove_node(victim, allow_graceful=False)

                out["node"] = failover(c, lose_node)
    finally:
        serve.stop()
        if ray_cluster is not None:
            ray_cluster.shutdown()
    return out


def label(mode: str, standby: int) -> str:
    return f"local, --standby {standby}" if mode == "local" else "Ray, --ray-standby 1"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--modes", default="local,ray")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--idle-s", type=float, default=25.0)
    ap.add_argument(
        "--local-standby", default="1", help="serve --standby of local; a list (0,1): a row each"
    )
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-farm-") as d:
        runs = [
            (mode, int(n))
            for mode in args.modes.split(",")
            for n in (args.local_standby.split(",") if mode == "local" else ["1"])
        ]
        for i, (mode, standby) in enumerate(runs):
            r = run_mode(mode, args.repeats, args.idle_s, Path(d) / str(i), standby)
            med = statistics.median
            fo = [t for t, _ in r["failover"]]
            steps = [s for _, s in r["failover"]]
            node = f"{r['node'][0]:.1f} s (step {r['node'][1]})" if r["node"] else "-"
            rows.append(
                f"| {label(mode, standby)} | {med(r['start_run']) * 1000:.0f} ms "
                f"| {med(r['start_first']):.2f} s "
                f"(max {max(r['start_first']):.2f}) | {med(fo):.1f} s (max {max(fo):.1f}; resumed "
                f"at step {min(steps)}-{max(steps)}) | {node} |"
            )
    load = os.getloadavg()[0]
    print(f"\n{args.repeats} repeats, idle {args.idle_s:g} s before each, load {load:.1f}")
    print(
        "| workers | submit -> running | submit -> first step (idle worker) "
        "| failover: kill -> running again | node lost -> running again |"
    )
    print("|---|---|---|---|---|")
    for row in rows:
        print(row)


if __name__ == "__main__":
    main()
