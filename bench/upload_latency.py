"""How long another client waits for a ``ping`` reply while large uploads arrive.

A service (CURVE off, loopback, no job started: ``max_running=0``) runs in a child process; one
client sends N submits of a 47 MiB target back to back while a second client pings in a loop.
Two variants side by side in one run: uploads handled on the service loop (``inline``, as before
``server/uploads.py``) and on upload threads (``threads``, the default).

    .venv/bin/python bench/upload_latency.py [--uploads 6] [--mib 47]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from stabledreamer.server.service import Service, ServiceConfig
from stabledreamer_protocol import JobState, Pong, Submit
from stabledreamer_protocol.client import Client


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(cfg: ServiceConfig) -> None:
    s = Service(cfg)
    s.open()
    try:
        while True:
            s.step()
    finally:
        s.close()


def pinger(endpoint: str, stop: threading.Event, out: list[tuple[float, float]]) -> None:
    with Client(endpoint).connect() as c:
        c.handshake()
        while not stop.is_set():
            t0 = time.perf_counter()
            rid = c.ping()
            hit = c.wait_for(lambda e, rid=rid: isinstance(e, Pong) and e.re == rid, 30.0)
            if hit is not None:
                out.append((t0, time.perf_counter() - t0))
            time.sleep(0.005)


def run(variant: str, uploads: int, mib: int, state: Path) -> dict:
    offload = 1 << 20 if variant == "threads" else 1 << 62
    cfg = ServiceConfig(bind=f"tcp://127.0.0.1:{free_port()}", state=state, curve=False,
                        prewarm=False, max_running=0, upload_offload_bytes=offload)  # fmt: skip
    proc = mp.get_context("spawn").Process(target=serve, args=(cfg,), daemon=True)
    proc.start()
    rtts: list[tuple[float, float]] = []
    stop = threading.Event()
    data = np.frombuffer(np.random.default_rng(0).bytes(mib << 20), np.uint8)
    try:
        with Client(cfg.bind).connect() as up:
            up.handshake(timeout_s=30)
            t = threading.Thread(target=pinger, args=(cfg.bind, stop, rtts), daemon=True)
            t.start()
            time.sleep(1.0)  # idle pings first
            start = time.perf_counter()
            jobs = []
            for i in range(uploads):
                jobs.append(f"u{i}")
                msg = Submit(job=jobs[-1], target_format="ply", target_file=data, preset="smoke")
                up.send(msg)
            accepted: set[str] = set()
            while len(accepted) < uploads:
                e = up.wait_for(lambda e: isinstance(e, JobState), 120.0)
                assert e is not None, "the uploads were not accepted"
                accepted.add(e.job)
            end = time.perf_counter()
            time.sleep(0.3)
            stop.set()
            t.join(30)
    finally:
        proc.kill()
        proc.join()
    idle = [r for t0, r in rtts if t0 < start]
    busy = [r for t0, r in rtts if start <= t0 <= end]
    return {"idle": idle, "busy": busy, "accept_s": end - start}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--uploads", type=int, default=6)
    ap.add_argument("--mib", type=int, default=47)
    args = ap.parse_args()
    rows = {}
    for variant in ("inline", "threads"):
        with tempfile.TemporaryDirectory() as tmp:
            rows[variant] = run(variant, args.uploads, args.mib, Path(tmp))
    print(f"{args.uploads} submits of {args.mib} MiB from one client; ping round trips (ms) of "
          "another client while they arrive")  # fmt: skip
    head = "| variant | idle median | pings while uploading | median | p95 | max | accepted (s) |"
    print(head)
    print("|---|---|---|---|---|---|---|")
    for variant, r in rows.items():
        busy = sorted(r["busy"]) or [float("nan")]
        p95 = busy[min(len(busy) - 1, int(0.95 * len(busy)))]
        print(
            f"| {variant} | {statistics.median(r['idle']) * 1e3:.1f} | {len(r['busy'])} "
            f"| {statistics.median(busy) * 1e3:.1f} | {p95 * 1e3:.1f} | {busy[-1] * 1e3:.1f} "
            f"| {r['accept_s']:.2f} |"
        )
    ratio = max(rows["inline"]["busy"]) / max(rows["threads"]["busy"])
    print(f"worst ping, inline / threads: {ratio:.1f}x")


if __name__ == "__main__":
    main()
