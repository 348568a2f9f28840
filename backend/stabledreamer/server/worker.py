"""Jobs in a child process, so the service loop stays responsive and a crash stays contained.

The service starts its workers (multiprocessing "spawn") before they are needed: a worker
imports torch and warms up, says ``WorkerReady`` and waits for ``RunJob``. It then runs
``run_reconstruction`` or ``run_generation`` (resuming from the run folder's checkpoint when
there is one) and reports over its end of a ``multiprocessing.Pipe`` (internal, between our
own processes; never on the wire) with the messages of ``pipe``. Cancel and stop are read by
the progress callback, so they take effect within one step (the trainer checkpoints first).

A worker is long-lived: after a job it waits for the next one, keeping the guidance models it
loaded (``runs.warm.GuidanceCache``), so the next prompt starts without loading them. A job that
failed ends the process instead (everything it held is released; the pool starts a fresh one).
``run_job`` is the seam to other executors: it runs one ``JobSpec`` and returns its final
message, reporting through any object with ``send``/``poll``/``recv`` (a Ray actor could run the
same function with a queue in place of the pipe).

Failures: a :class:`~stabledreamer.errors.StableDreamerError` is the user's to fix and is sent
with its own code (``job_failed`` by default); torch running out of memory is
``out_of_memory``; anything else is a bug, sent as ``internal`` with its traceback.

The worker never outlives the service: on Linux the kernel kills it when its parent dies
(``PR_SET_PDEATHSIG``); elsewhere a watchdog thread notices the parent is gone within a second.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import signal
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from stabledreamer_protocol import DEFAULT_LIMITS

from . import pipe

PROGRESS_INTERVAL_S = 0.1
DEBUG_INTERVAL_S = 1.0
CHUNK_SIZE = 1 << 20
MEDIA_TYPES = {
    "gaussians.ply": "application/x-ply",
    "mesh.glb": "model/gltf-binary",
    "metrics.json": "application/json",
    "turntable.png": "image/png",
    "heldout.png": "image/png",
}
"""Result files, in manifest order (those a run wrote)."""


def die_with_parent(parent_pid: int) -> None:
    """Make sure this process ends when the service does, even on SIGKILL."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)

    def watchdog() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != parent_pid:
                os._exit(1)

    threading.Thread(target=watchdog, name="parent-watchdog", daemon=True).start()


def worker_main(conn, parent_pid: int, slot=None) -> None:
    """Entry point of the child process. ``slot`` (``pool.Slot``): its torch threads (its GPU
    is already in the environment the pool started it with)."""
    die_with_parent(parent_pid)
    # Ctrl-C in a terminal reaches the whole process group; the service decides what happens.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    conn = LockedConn(conn)
    threading.Thread(target=_beat, args=(conn,), name="heartbeat", daemon=True).start()
    from ..render.raster_torch import tune_allocator
    from ..runs.warm import GuidanceCache

    tune_allocator()  # this process renders: keep the rasteriser's freed arenas (see there)
    try:
        info = _warm_up(getattr(slot, "threads", 0))
        conn.send(pipe.WorkerReady(info))
        cache = GuidanceCache()
        import torch

        threads = torch.get_num_threads()  # a job's config may change it: back after each
        while True:
            msg = conn.recv()
            if isinstance(msg, pipe.RunJob):
                final = run_job(conn, msg.spec, cache)
                conn.send(pipe.WorkerStatus(cache.loads, tuple(cache.names())))
                conn.send(final)
                if not keeps_worker(final):
                    _exit()
                torch.set_num_threads(threads)
                cache.trim()
            elif isinstance(msg, pipe.ExitWorker):
                _exit()
            # anything else (a cancel or stop that crossed its job's end) is over already
    except (EOFError, BrokenPipeError, KeyboardInterrupt):
        return


def keeps_worker(final: object) -> bool:
    """Whether the worker takes another job after this final message: not after a failure
    (whatever went wrong may live on in what the process holds: it ends, releasing all)."""
    return not isinstance(final, pipe.JobFailed)


def _exit() -> None:
    # Everything is reported and saved: skip the slow interpreter teardown of torch, so the
    # GPU and the memory are free at once.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


class LockedConn:
    """The pipe, with sends from the job and the heartbeat thread one at a time."""

    def __init__(self, conn) -> None:
        self._conn = conn
        self._lock = threading.Lock()

    def send(self, msg: object) -> None:
        with self._lock:
            self._conn.send(msg)

    def recv(self):
        return self._conn.recv()

    def poll(self, timeout: float = 0.0) -> bool:
        return self._conn.poll(timeout)


def _beat(conn: LockedConn) -> None:
    while True:
        try:
            conn.send(pipe.Heartbeat())
        except (OSError, ValueError):  # the service is gone or the pipe closed
            return
        time.sleep(pipe.HEARTBEAT_S)


def _warm_up(threads: int = 0) -> str:
    """Import what a job needs and touch the lazily imported parts (the first Adam step pulls in
    torch's compiler modules, seconds on a small CPU), so a job starts at once. ``threads``:
    torch's CPU threads (0: its default, one per core)."""
    import torch

    if threads > 0:
        torch.set_num_threads(threads)

    from ..runs import reconstruct  # noqa: F401

    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([p], lr=0.1)
    p.grad = torch.ones(1)
    opt.step()
    # Jobs run on the config's default device ("auto": the GPU when there is one).
    from ..device import resolve_device

    dev = resolve_device("auto")
    if dev.type == "cuda":
        _ready_gsplat()
        props = torch.cuda.get_device_properties(dev)
        return f"cuda ({props.name}, {props.total_memory / 2**30:.0f} GiB)"
    return "cpu"


def _ready_gsplat() -> None:
    """Load gsplat's kernels now, building them first when they are missing and can be built
    (once, with progress on stderr), so no job compiles them inside its first step; without a
    compiler, or when loading fails, jobs render with the pure-torch rasteriser (they say so).
    The heartbeat goes on meanwhile: a long build is not taken for a hung worker."""
    from ..errors import StableDreamerError
    from ..render import gsplat_kernels

    st = gsplat_kernels.status()
    if not (st.ready or st.can_build):
        return
    try:
        gsplat_kernels.build(lambda msg: print(msg, file=sys.stderr, flush=True))
    except (RuntimeError, StableDreamerError) as e:  # BuildLockTimeout: another build runs
        print(f"stabledreamer worker: {e}", file=sys.stderr, flush=True)


def _timestep_fraction(p) -> float | None:
    """The step's first timestep as a fraction of the guidance's T, in [0, 1]."""
    if not p.t or not p.num_train_timesteps:
        return None
    return min(max(p.t[0] / p.num_train_timesteps, 0.0), 1.0)


class Reporter:
    """The trainer's progress callback: reports to the service, reads cancel/stop."""

    def __init__(self, conn, spec: pipe.JobSpec, resumed: bool = False) -> None:
        self.conn, self.job = conn, spec.job
        self.resumed = resumed
        """Say where the run resumed, at its first step."""
        self.preview_points = spec.preview_points
        self.preview_interval_s = spec.preview_interval_s
        self.stop_reason: str | None = None
        self._last_progress = self._last_preview = self._last_debug = 0.0

    def read_commands(self) -> None:
        while self.conn.poll():
            msg = self.conn.recv()
            if isinstance(msg, pipe.CancelJob | pipe.StopJob):
                # A stop (shutdown) never turns into a cancel and the other way round.
                reason = "stop" if isinstance(msg, pipe.StopJob) else "cancel"
                self.stop_reason = self.stop_reason or reason
            elif isinstance(msg, pipe.PreviewPoints):
                self.preview_points = int(msg.n)

    def __call__(self, p) -> bool:
        self.read_commands()
        if self.resumed:
            self.resumed = False
            where = f"{p.stage} step {p.step - 1} of {p.stage_steps}"
            self.conn.send(pipe.LogLine(logging.INFO, f"resumed from its checkpoint at {where}"))
        now = time.monotonic()
        stage_end = p.step == p.stage_steps
        if stage_end or now - self._last_progress >= PROGRESS_INTERVAL_S:
            self._last_progress = now
            self.conn.send(
                pipe.ProgressReport(
                    stage=p.stage,
                    step=p.step,
                    total=p.stage_steps,
                    losses={k: float(v) for k, v in p.losses.items()},
                    num_gaussians=int(p.gaussians),
                    timestep=_timestep_fraction(p),
                    elapsed_s=float(p.elapsed_s),
                    eta_s=float(p.eta_s),
                )
            )
        if (
            self.preview_points > 0
            and p.params is not None
            and (stage_end or now - self._last_preview >= self.preview_interval_s)
        ):
            self._last_preview = now
            self.conn.send(self._preview(p))
        if p.debug_image is not None and (stage_end or now - self._last_debug >= DEBUG_INTERVAL_S):
            self._last_debug = now
            self.conn.send(self._debug(p))
        return self.stop_reason is not None

    def _preview(self, p) -> pipe.PreviewFrame:
        import torch

        from .. import gaussians as G

        with torch.no_grad():
            params = p.params
            n = G.count(params)
            opacities = torch.sigmoid(params["opacities"].detach())
            if n > self.preview_points:
                keep = torch.topk(opacities, self.preview_points).indices.sort().values
            else:
                keep = slice(None)
            arrays = {
                "means": params["means"].detach()[keep],
                "log_scales": params["scales"].detach()[keep],
                "quats": params["quats"].detach()[keep],
                "rgb": G.sh0_to_rgb(params["sh0"].detach()[keep][:, 0, :]).clamp(0.0, 1.0),
                "opacities": opacities[keep],
            }
            arrays = {k: v.float().cpu().numpy() for k, v in arrays.items()}
        return pipe.PreviewFrame(stage=p.stage, step=p.step, total_gaussians=n, **arrays)

    def _debug(self, p) -> pipe.DebugFrame:
        import torch

        image = p.debug_image.detach().float().clamp(0, 1)
        side = DEFAULT_LIMITS.max_image_side
        h, w = image.shape[:2]
        if h > side or w > side:
            step = -(-max(h, w) // side)
            image = image[::step, ::step]
        u8 = (image * 255.0 + 0.5).to(torch.uint8).cpu().numpy()
        timestep = _timestep_fraction(p)
        return pipe.DebugFrame(
            stage=p.stage,
            step=p.step,
            timestep=timestep,
            labels=["render", "noisy input", "x0 estimate"],
            image=u8,
        )


def _target_path(spec: pipe.JobSpec) -> str:
    from .jobs import PROCEDURAL_DEMO

    if spec.kind == "demo":
        return PROCEDURAL_DEMO
    path = Path(spec.job_dir) / spec.target_file
    if path.suffix == ".npz":  # vertex/face arrays: written as a coloured PLY (Z-up, like Blender)
        ply = path.with_suffix(".ply")
        if not ply.is_file():
            _arrays_to_ply(path, ply)
        path = ply
    return str(path)


def _init_path(spec: pipe.JobSpec) -> str:
    """The submit's initial points as a coloured point-cloud PLY ("" when none were sent)."""
    if not spec.init_file:
        return ""
    import numpy as np
    import trimesh

    from ..atomic import atomic_path

    src = Path(spec.job_dir) / spec.init_file
    dst = src.with_suffix(".ply")
    if not dst.is_file():
        with np.load(src, allow_pickle=False) as z:
            points = z["points"]
            colors = z["colors"] if "colors" in z.files else None
        kw = {}
        if colors is not None:
            rgba = np.concatenate([colors, np.ones((len(colors), 1))], axis=1)
            kw["colors"] = (rgba * 255 + 0.5).astype(np.uint8)
        cloud = trimesh.PointCloud(points, **kw)
        with atomic_path(dst) as tmp:
            tmp.write_bytes(cloud.export(file_type="ply"))
    return str(dst)


def _arrays_to_ply(src: Path, dst: Path) -> None:
    import numpy as np
    import trimesh

    from ..atomic import atomic_path

    with np.load(src, allow_pickle=False) as z:
        vertices, faces = z["vertices"], z["faces"]
        colors = z["colors"] if "colors" in z.files else None
    kw = {}
    if colors is not None:
        rgba = np.concatenate([np.clip(colors, 0, 1), np.ones((len(colors), 1))], axis=1)
        kw["vertex_colors"] = (rgba * 255 + 0.5).astype(np.uint8)
    mesh = trimesh.Trimesh(vertices=vertices, faces=faces, process=False, **kw)
    with atomic_path(dst) as tmp:
        tmp.write_bytes(mesh.export(file_type="ply"))


def manifest(run_dir: Path) -> dict[str, Any]:
    files = []
    for name, media in MEDIA_TYPES.items():
        path = run_dir / name
        if not path.is_file():
            continue
        h = hashlib.sha256()
        size = 0
        with open(path, "rb") as f:
            while block := f.read(CHUNK_SIZE):
                h.update(block)
                size += len(block)
        files.append({"name": name, "size": size, "sha256": h.hexdigest(), "media_type": media})
    return {"files": files, "chunk_size": CHUNK_SIZE}


def _preflight(conn, run_dir: Path):
    """The job's preflight (``doctor.preflight``): its notes go to the job's log."""

    def check(cfg):
        from ..doctor.preflight import preflight

        pf = preflight(cfg, run_dir, memory="auto")
        for note in pf.notes:
            conn.send(pipe.LogLine(logging.WARNING, note))
        return pf.memory_tier

    return check


def _hub_token(conn) -> None:
    """Give this worker's model loads the backend's stored hub token (``models.token``: from
    ``set_token`` or ``stabledreamer models token set``) unless ``HF_TOKEN`` is set: a gated
    repository (DeepFloyd IF) is checked against the hub even when its files are in the cache,
    and huggingface_hub reads ``HF_TOKEN`` at every call. The token is never logged. A
    long-lived worker reads the store again for every job (a token given meanwhile is used)."""
    global _token_from_store
    if os.environ.get("HF_TOKEN") and not _token_from_store:
        return
    from ..models.token import TokenError, load_token

    try:
        token = load_token()
    except TokenError as e:  # a token file readable by others: not used, and said why
        conn.send(pipe.LogLine(logging.WARNING, f"the stored hub token is not used: {e}"))
        return
    if token:
        os.environ["HF_TOKEN"] = token
        _token_from_store = True
    elif _token_from_store:  # removed from the store since
        os.environ.pop("HF_TOKEN", None)
        _token_from_store = False


_token_from_store = False
"""Whether ``HF_TOKEN`` in this process came from the store (then each job reads it again)."""


def run_job(conn, spec: pipe.JobSpec, guidances=None):
    """Run (or resume) one job, reporting on ``conn``; returns its final message (one of
    ``pipe.FINAL``) for the caller to send. ``guidances``: the process's model cache."""
    import torch

    from ..errors import StableDreamerError
    from ..runs.checkpoint import has_checkpoint
    from ..runs.generate import run_generation
    from ..runs.reconstruct import run_reconstruction
    from ..runs.trainer import TrainingCancelled
    from .jobs import build_config

    run_dir = Path(spec.run_dir)
    reporter = Reporter(conn, spec)
    try:
        fresh = False  # a refine / continue whose run folder was just prepared from its parent
        if spec.mode:
            from .followups import prepare_job_followup

            fresh = prepare_job_followup(spec, run_dir)
        resume = (run_dir / "config.json").is_file() and has_checkpoint(run_dir)
        reporter.resumed = resume
        cfg = None
        if not resume:
            if run_dir.exists():  # killed before its first checkpoint: start again
                shutil.rmtree(run_dir)
            if spec.kind == "generate":
                cfg = build_config(
                    spec.preset, spec.overrides, spec.seed, "", spec.prompt, spec.negative,
                    spec.models, _init_path(spec), model_set=spec.model_set or None,
                )  # fmt: skip
            else:
                cfg = build_config(spec.preset, spec.overrides, spec.seed, _target_path(spec))
        conn.send(pipe.JobStarted(resume and not fresh))
        what = "resuming from the last checkpoint" if resume and not fresh else "started"
        conn.send(pipe.LogLine(logging.INFO, what))
        if resume:
            from ..runs.folder import load_run_config

            cfg = load_run_config(run_dir)
        if spec.kind == "generate":  # checked before any model loads
            _hub_token(conn)
            metrics = run_generation(cfg, run_dir, resume=resume, callback=reporter,
                                     preflight=_preflight(conn, run_dir),
                                     guidances=guidances)  # fmt: skip
        else:
            metrics = run_reconstruction(cfg, run_dir, resume=resume, callback=reporter)
        reporter.read_commands()
        return pipe.JobDone(metrics, manifest(run_dir))
    except TrainingCancelled:
        return pipe.JobStopped() if reporter.stop_reason == "stop" else pipe.JobCancelled()
    except (EOFError, BrokenPipeError):
        raise
    except Exception as e:
        failed = failure(e, torch.OutOfMemoryError, (StableDreamerError,), run_dir)
        if failed.code == "internal":  # a bug: its traceback goes to the service's log
            trace = traceback.format_exc()
            sys.stderr.write(trace)
            conn.send(pipe.LogLine(logging.ERROR, trace))
        if guidances is not None:
            guidances.clear()
        return failed


def failure(
    e: BaseException, oom: type, user: tuple[type, ...], run_dir: Path | None = None
) -> pipe.JobFailed:
    """What a job's exception means for its submitter (see the module doc): ``oom`` is torch's
    out-of-memory error, ``user`` the user error classes. A write that failed for want of space
    (through ``atomic_path`` or not) is ``disk_full``, with the bytes it needed."""
    from ..atomic import DiskFullError, disk_full

    if isinstance(e, oom):
        return pipe.JobFailed("out_of_memory", f"out of memory: {str(e).splitlines()[0]}")
    if not isinstance(e, DiskFullError) and isinstance(e, OSError) and run_dir is not None:
        e = disk_full(e, run_dir / "?", 0) or e
    if isinstance(e, DiskFullError):
        return pipe.JobFailed("disk_full", str(e), needed_bytes=e.needed)
    if isinstance(e, user):
        return pipe.JobFailed(getattr(e, "code", None) or "job_failed", str(e))
    return pipe.JobFailed("internal", f"{type(e).__name__}: {e}")
