"""`make gpu-check`: verify a machine with an NVIDIA GPU in one run of about ten minutes.

It uses the machine's own CUDA build of torch (it never runs `make setup`, which installs the CPU
build), installs only what is missing from requirements.lock.txt (never torch; ``--wheels DIR``
installs from a local wheel folder when there is no network), then runs each step below in a
child process with its own time limit, and writes each step's figures as soon as it ends:
``build/gpu-check/results.json`` and the markdown table ``docs/gpu-results.md`` (with the GPU's
name). Steps:

1. env: the GPU, its memory, torch and its CUDA;
2. install: the lock's missing packages (without torch and bpy, which the GPU path does not use);
3. gsplat build: gsplat's CUDA kernels, timed (``render.gsplat_kernels``);
4. cuda tests: ``pytest -m gpu``;
5. generate with the tiny models on CUDA: with gsplat, with the pure-torch renderer, and with
   ``--cpu-offload``;
6. the 8 and 12 GB memory tiers on a larger card: ``bench/sds_step.py --full-size
   --memory-tier N --cap-gib N`` (the process's memory capped with
   ``torch.cuda.set_per_process_memory_fraction``);
7. ``bench/sds_step.py --full-size`` per stage with peak memory (all resident).

Without a GPU it stops at once saying so. ``--dry-run`` executes every step on the CPU with
stand-ins (the native/torch rasterisers for gsplat, a loader that builds nothing for the kernel
build, the tiny-model bench for the full-size one, the tiers' estimates for their capped runs),
so the script is known to work before it meets a GPU; it writes ``build/gpu-check/`` only.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "backend"), str(ROOT / "shared")]
RESULT_TAG = "GPU_CHECK_RESULT "
SKIP_FROM_LOCK = ("torch", "bpy")
"""Never installed here: torch is the machine's CUDA build; bpy (Blender) is not on the GPU path."""
CUDA_TESTS = [str(ROOT / "tests" / f) for f in
              ("test_render.py", "test_device.py", "test_doctor.py")]  # fmt: skip
"""The files with ``@pytest.mark.gpu`` tests (the add-on's tests need bpy, not installed here)."""
TOTAL_BUDGET_S = 600
"""The whole run: rented GPUs often come in short windows."""
DRY_RUN_SLOWDOWN = 2
"""A dry run's step limits and budget are this many times the GPU's: a CPU is slower."""


@dataclass
class Step:
    name: str
    limit_s: int
    argv: list[str]  # a child process (the same Python)
    gpu_only_note: str = ""  # what the dry run stands in for


@dataclass
class Result:
    step: str
    status: str  # ok | failed | timeout | skipped
    seconds: float
    figures: dict = field(default_factory=dict)
    tail: str = ""


def _py(*args: str) -> list[str]:
    return [sys.executable, *args]


def _self(*args: str) -> list[str]:
    return _py(str(Path(__file__).resolve()), *args)


def steps(dry: bool, wheels: str | None) -> list[Step]:
    d = ["--dry-run"] if dry else []
    w = ["--wheels", wheels] if wheels else []
    bench = str(ROOT / "bench" / "sds_step.py")
    tiny_bench = ["--views", "1", "--gaussians", "300", "--steps", "1", "--sd-resolution", "64"]
    full = ["--full-size", "--no-tiny", "--full-views", "4", "--full-steps", "1"]
    out = [
        Step("env", 30, _self("--step", "env", *d)),
        Step("install", 180, _self("--step", "install", *d, *w)),
        Step("gsplat build", 300, _self("--step", "gsplat-build", *d), "no nvcc: nothing built"),
        Step("cuda tests", 120, _py("-m", "pytest", "-q", "-m", "gpu", *CUDA_TESTS),
             "the GPU tests skip"),
        Step("generate gsplat", 90, _self("--step", "generate", "--renderer", "gsplat", *d),
             "the CPU's rasteriser (native when installed)"),
        Step("generate torch renderer", 90, _self("--step", "generate", "--renderer", "torch", *d)),
        Step("generate --cpu-offload", 90,
             _self("--step", "generate", "--renderer", "auto", "--offload", *d)),
    ]  # fmt: skip
    for gb in (8, 12):
        if dry:
            argv = _self("--step", "tier", "--gb", str(gb), "--dry-run")
        else:
            argv = _py(bench, *full, "--memory-tier", str(gb), "--cap-gib", str(gb))
        out.append(Step(f"{gb} GB tier", 150, argv, "the tier's estimate, no capped run"))
    argv = _py(bench, *tiny_bench) if dry else _py(bench, *full)
    out.append(Step("sds_step full-size", 180, argv, "the tiny-model bench"))
    return out


# -- the steps' own work (run in a child process: `gpu_check.py --step NAME`) ---------------------


def _emit(**figures) -> None:
    print(RESULT_TAG + json.dumps(figures), flush=True)


def step_env(dry: bool) -> None:
    import torch

    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        _emit(gpu=p.name, gpu_gib=round(p.total_memory / 2**30, 1), torch=torch.__version__,
              cuda=torch.version.cuda)  # fmt: skip
    else:
        _emit(gpu="none (dry run on the CPU)" if dry else "none", torch=torch.__version__,
              cuda=torch.version.cuda)  # fmt: skip


def missing_from_lock(lock: Path) -> list[str]:
    """The lock's ``name==version`` pins not installed at that version (torch and bpy left out)."""
    from importlib import metadata

    missing = []
    for line in lock.read_text().splitlines():
        line = line.split("#")[0].strip()
        if "==" not in line:
            continue
        name, version = (x.strip() for x in line.split("==", 1))
        if name.lower() in SKIP_FROM_LOCK:
            continue
        try:
            if metadata.version(name) == version:
                continue
        except metadata.PackageNotFoundError:
            pass
        missing.append(f"{name}=={version}")
    return missing


def step_install(dry: bool, wheels: str | None) -> None:
    missing = missing_from_lock(ROOT / "requirements.lock.txt")
    if not missing:
        _emit(missing=0, installed=0)
        return
    cmd = _py("-m", "pip", "install", "--no-deps", *missing)
    if wheels:
        cmd += ["--no-index", "--find-links", wheels]
    if dry:
        cmd.append("--dry-run")
    print(" ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    _emit(missing=len(missing), installed=0 if dry else len(missing))


def step_gsplat_build(dry: bool) -> None:
    from stabledreamer.render import gsplat_kernels

    st = gsplat_kernels.status()
    if st.ready:
        _emit(state="already built", seconds=0.0)
        return
    if dry:  # the same code path, with a loader that builds nothing
        stand_in = lambda: time.sleep(0.1) or object()  # noqa: E731
        seconds = gsplat_kernels.build(print, every_s=0.05, load=stand_in)
        _emit(state=f"stand-in ({st.why})", seconds=round(seconds, 2))
        return
    if not st.can_build:
        raise SystemExit(f"gsplat's kernels cannot be built here: {st.why}")
    seconds = gsplat_kernels.build(print)
    _emit(state="built", seconds=round(seconds, 1),
          max_jobs=gsplat_kernels.max_jobs_for(gsplat_kernels.free_ram_bytes()))  # fmt: skip


def step_generate(dry: bool, renderer: str, offload: bool, work: Path) -> None:
    import torch

    from stabledreamer.doctor.preflight import preflight
    from stabledreamer.guidance.tiny_models import save_tiny_models
    from stabledreamer.mesh.config import MeshConfig
    from stabledreamer.presets import get_preset
    from stabledreamer.runs.generate import run_generation

    tiny = work / "tiny-models"
    if not (tiny / "sd").is_dir():
        save_tiny_models(tiny)
    cfg = get_preset("preview")
    cfg.prompt = "a red chair"
    cfg.deepfloyd_if.model, cfg.stable_diffusion.model = str(tiny / "if"), str(tiny / "sd")
    cfg.device = "cpu" if dry else "cuda"
    # The dry run's stand-in for gsplat: the CPU's own choice (the native kernel when installed).
    cfg.render_backend = ("auto" if dry else "gsplat") if renderer == "gsplat" else renderer
    # A GPU does 10 + 5 steps in seconds; a CPU dry run only checks the path: 2 + 1.
    cfg.init.num_points, cfg.camera.batch_size = (300, 1) if dry else (1000, 2)
    cfg.stages[0].steps, cfg.stages[1].steps = (2, 1) if dry else (10, 5)
    cfg.stages[1].resolution = cfg.stable_diffusion.resolution = 64
    cfg.eval_resolution, cfg.checkpoint_every = 32, 100
    cfg.mesh = MeshConfig(enabled=False)
    out = work / f"generate-{renderer}{'-offload' if offload else ''}"

    def check(c):
        pf = preflight(c, out, memory="auto", cpu_offload=offload, progress=print)
        return pf.memory_tier

    start = time.perf_counter()
    m = run_generation(cfg, out, overwrite=True, cpu_offload=offload, preflight=check)
    stages = {k: v["seconds_per_step"] for k, v in m["stages"].items()}
    _emit(seconds=round(time.perf_counter() - start, 1), renderer=m["render_backend"],
          device=m["device"], s_per_step=stages, peak_mb=m["peak_memory_mb"],
          cuda=torch.cuda.is_available())  # fmt: skip


def step_tier(gb: int) -> None:
    """Dry-run stand-in for a capped full-size run: the tier's estimate for the standard preset."""
    from stabledreamer.doctor.gpu_memory import tier_estimate
    from stabledreamer.presets import get_preset

    _emit(tier_gb=gb, estimated_gib=round(tier_estimate(get_preset("standard"), gb), 2))


# -- the driver -----------------------------------------------------------------------------------


def _figures(stdout: str) -> dict:
    figures: dict = {}
    for line in stdout.splitlines():
        if line.startswith(RESULT_TAG):
            figures.update(json.loads(line[len(RESULT_TAG) :]))
    lines = stdout.splitlines()
    first = next((i for i, line in enumerate(lines) if line.startswith("|")), None)
    if first is not None:  # the step's own markdown output (the bench's tables), verbatim
        figures["table"] = [x for x in lines[first:] if not x.startswith(RESULT_TAG)]
    return figures


def run_step(step: Step, limit_s: float, env: dict) -> Result:
    start = time.perf_counter()
    try:
        proc = subprocess.run(step.argv, capture_output=True, text=True, timeout=limit_s,
                              env=env, cwd=ROOT)  # fmt: skip
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        return Result(step.name, "timeout", time.perf_counter() - start, _figures(out), out[-800:])
    seconds = time.perf_counter() - start
    text = proc.stdout + proc.stderr
    status = "ok" if proc.returncode == 0 else "failed"
    if step.name == "cuda tests":
        m = re.search(r"(\d+ (passed|skipped|failed|deselected)[^\n]*) in ", text)
        figures = {"pytest": m.group(1) if m else text.strip().splitlines()[-1:]}
        if proc.returncode == 5:  # pytest: nothing collected / all deselected
            status = "ok"
    else:
        figures = _figures(proc.stdout)
    return Result(step.name, status, seconds, figures, "" if status == "ok" else text[-1500:])


def markdown(results: list[Result], gpu: str, dry: bool, steps_: list[Step]) -> str:
    when = f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC"
    title = "GPU check (dry run on the CPU, stand-ins)" if dry else "GPU check"
    notes = {s.name: s.gpu_only_note for s in steps_}
    lines = [f"# {title}", "", f"{gpu}; {when}; `make gpu-check`{' --dry-run' if dry else ''}.",
             "", "| step | status | seconds | figures |", "|---|---|---|---|"]  # fmt: skip
    tables = []
    for r in results:
        figs = {k: v for k, v in r.figures.items() if k != "table"}
        text = ", ".join(f"{k} {v}" for k, v in figs.items())
        if dry and notes.get(r.step):
            text = f"stand-in: {notes[r.step]}; {text}"
        lines.append(f"| {r.step} | {r.status} | {r.seconds:.1f} | {text} |")
        if "table" in r.figures:
            tables.append((r.step, r.figures["table"]))
    for name, table in tables:
        lines += ["", f"## {name}", "", *table]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="every step on the CPU, stand-ins")
    ap.add_argument("--wheels", help="install missing packages from this wheel folder (offline)")
    ap.add_argument("--work", default=str(ROOT / "build" / "gpu-check"), help="scratch and results")
    ap.add_argument("--results", default=None, help="markdown table (default docs/gpu-results.md)")
    ap.add_argument("--step", help=argparse.SUPPRESS)
    ap.add_argument("--renderer", default="auto", help=argparse.SUPPRESS)
    ap.add_argument("--offload", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--gb", type=int, default=8, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if args.step:  # inside a child process
        {
            "env": lambda: step_env(args.dry_run),
            "install": lambda: step_install(args.dry_run, args.wheels),
            "gsplat-build": lambda: step_gsplat_build(args.dry_run),
            "generate": lambda: step_generate(args.dry_run, args.renderer, args.offload, work),
            "tier": lambda: step_tier(args.gb),
        }[args.step]()
        return 0

    import torch

    if not args.dry_run and not torch.cuda.is_available():
        why = ("this torch is a CPU-only build" if torch.version.cuda is None
               else "torch sees no CUDA GPU (driver, CUDA_VISIBLE_DEVICES)")  # fmt: skip
        print(f"gpu-check: no NVIDIA GPU here ({why}); nothing was run. On a GPU machine, run it "
              "with the Python whose torch is a CUDA build; here, `make gpu-check ARGS=--dry-run` "
              "checks the script itself.", file=sys.stderr)  # fmt: skip
        return 2
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU (CPU dry run)"
    results_md = Path(args.results) if args.results else (
        work / "gpu-results.dry-run.md" if args.dry_run else ROOT / "docs" / "gpu-results.md"
    )  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path[:2]), "HF_HUB_OFFLINE": "1"}
    plan = steps(args.dry_run, args.wheels)
    results: list[Result] = []
    slow = DRY_RUN_SLOWDOWN if args.dry_run else 1
    deadline = time.perf_counter() + TOTAL_BUDGET_S * slow
    for step in plan:
        left = deadline - time.perf_counter()
        limit = min(step.limit_s * slow, left)
        if left < 5:
            results.append(Result(step.name, "skipped", 0.0, {"why": "past the time budget"}))
        else:
            print(f"gpu-check: {step.name} (at most {limit:.0f} s)...", flush=True)
            results.append(run_step(step, limit, env))
            r = results[-1]
            figs = {k: v for k, v in r.figures.items() if k != "table"}
            print(f"gpu-check: {step.name}: {r.status} in {r.seconds:.1f} s {figs}", flush=True)
            if r.tail:
                print(r.tail, flush=True)
        # Written after every step: a window that closes early still leaves the figures so far.
        (work / "results.json").write_text(json.dumps([asdict(r) for r in results], indent=1))
        results_md.parent.mkdir(parents=True, exist_ok=True)
        results_md.write_text(markdown(results, gpu, args.dry_run, plan))
    print(f"gpu-check: table in {results_md}")
    return 0 if all(r.status == "ok" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
