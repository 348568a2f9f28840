"""``stabledreamer doctor``: check what a real text-to-3D run needs, and say how to fix what's not.

Each check gives OK, WARN (a run works, worse or slower than it could) or FAIL (a run would
stop), a one-line detail and, when not OK, the fix. Checks: Python and the packages, CUDA and the
GPU's memory against the estimated need of each preset (``gpu_memory``), gsplat's CUDA kernels
(built here, with progress, on a GPU: the first build takes minutes), the native CPU rasteriser,
the two models (a local diffusers folder, the Hugging Face cache, or the hub when online), the
hub token DeepFloyd IF's gated repository needs, and free disk space. Exit code 0 when nothing
FAILs, 1 otherwise; ``--json`` prints the checks as a JSON list.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..models.sets import SD_21_BASE

OK, WARN, FAIL = "OK", "WARN", "FAIL"
GIB = 2**30
OUTPUT_NEED_GIB = 1.0
"""Free space a run folder needs (checkpoints, .ply, mesh, pictures) with room to spare."""
MODEL_PARTS = {
    "if": ("unet", "text_encoder", "tokenizer", "scheduler"),
    "sd": ("unet", "vae", "text_encoder", "tokenizer", "scheduler"),
}
WEIGHT_FILES = (  # one of these in the cache means the UNet's weights are there
    "unet/diffusion_pytorch_model.safetensors",
    "unet/diffusion_pytorch_model.fp16.safetensors",
    "unet/diffusion_pytorch_model.safetensors.index.json",
    "unet/diffusion_pytorch_model.safetensors.index.fp16.json",
)
DOWNLOAD_PARAMS = {
    "if": ("if_unet", "t5_xxl_encoder"),
    "sd": ("sd_unet", "sd_vae", "sd_text_encoder"),
}
"""The parts whose weights a download brings (``_download_gib``)."""


@dataclass
class Check:
    name: str
    status: str  # OK | WARN | FAIL
    detail: str
    fix: str = ""


@dataclass
class DoctorConfig:
    if_model: str
    sd_model: str
    device: str = "auto"
    """auto / cuda: a real run on a GPU is checked; cpu: a CPU run (tiny models) is meant."""
    out: str = "runs"
    """Where run folders go (its free space is checked)."""
    build_gsplat: bool = True
    """On a GPU, build gsplat's CUDA kernels now (minutes the first time)."""
    hf_cache: str | None = None
    """The Hugging Face hub cache; None: huggingface_hub's (HF_HUB_CACHE / HF_HOME)."""
    models: str = ""
    """The model set checked (``models.sets``); a set without DeepFloyd IF (``sd-only``) needs
    neither IF nor a hub token. Empty: both models are checked."""
    hub_timeout_s: float = 10.0
    progress: Callable[[str], None] = field(default=lambda msg: None, repr=False)


# -- the checks -----------------------------------------------------------------------------------


def check_python() -> Check:
    v = sys.version_info
    text = f"Python {v.major}.{v.minor}.{v.micro}"
    if v < (3, 10):
        return Check("python", FAIL, text, "use Python 3.10 or newer (3.11 is tested)")
    return Check("python", OK, text)


def check_packages() -> Check:
    import importlib.metadata as md

    found, missing = [], []
    for name in ("torch", "diffusers", "transformers", "accelerate", "gsplat", "huggingface_hub"):
        try:
            found.append(f"{name} {md.version(name)}")
        except md.PackageNotFoundError:
            missing.append(name)
    if missing:
        return Check(
            "packages", FAIL, f"missing: {', '.join(missing)}",
            "install the project into its venv: `make setup` (or pip install -e .)",
        )  # fmt: skip
    return Check("packages", OK, ", ".join(found))


def check_cuda(device: str) -> tuple[Check, int]:
    """The CUDA check and the GPU's total memory in bytes (0 without one)."""
    import torch

    if device == "cpu":
        return Check(
            "cuda", WARN, "CPU run asked for (--device cpu): fine for tiny test models only",
            "real models need an NVIDIA GPU (one full-size SD step takes about a minute per "
            "view on a 2-core CPU; docs/gpu.md)",
        ), 0  # fmt: skip
    if not torch.cuda.is_available():
        if torch.version.cuda is None:
            fix = (
                f"this torch ({torch.__version__}) is a CPU-only build: on a machine with an "
                "NVIDIA GPU install a CUDA build (pip install torch --index-url "
                "https://download.pytorch.org/whl/cu128, matching your driver)"
            )
        else:
            fix = "check the driver (nvidia-smi) and CUDA_VISIBLE_DEVICES"
        return Check("cuda", FAIL, "no CUDA GPU visible to torch", fix), 0
    from ..device import DeviceError, resolve_device

    try:
        dev = resolve_device(device)
    except DeviceError as e:
        return Check("cuda", FAIL, str(e), "pick a device that exists (nvidia-smi lists them)"), 0
    props = torch.cuda.get_device_properties(dev.index or 0)
    text = (
        f"{props.name}, {props.total_memory / GIB:.1f} GiB, compute {props.major}.{props.minor}, "
        f"torch CUDA {torch.version.cuda}"
    )
    return Check("cuda", OK, text), props.total_memory


def check_gpu_memory(total_bytes: int, device: str = "auto") -> Check:
    """The GPU's memory against the memory tiers (``memory_tiers``) of the standard preset."""
    from ..presets import get_preset
    from .gpu_memory import choose_tier, tier_table

    cfg = get_preset("standard")
    table = tier_table(cfg)
    tiers = ", ".join(f"{gb} GB tier {need:.1f}" for gb, need in table.items())
    summary = f"estimated need in GiB (counted from the architectures, not measured): {tiers}"
    if total_bytes == 0 and device == "cpu":
        return Check("gpu memory", OK, f"skipped (CPU run); for a GPU run, {summary}")
    if total_bytes == 0:
        return Check("gpu memory", WARN, f"no GPU to compare; {summary}", "see docs/gpu.md")
    have = total_bytes / GIB
    tier = choose_tier(cfg, have, have)
    if tier is None:
        return Check(
            "gpu memory", FAIL, f"{have:.1f} GiB is below even the 8 GB tier; {summary}",
            "use a GPU with at least 8 GB (docs/gpu.md)",
        )  # fmt: skip
    note = f"{have:.1f} GiB: --memory auto picks the {tier} GB tier; {summary}"
    if tier < 12:
        return Check(
            "gpu memory", WARN, note,
            "stage 1 streams IF's weights from CPU memory every step (slower); docs/gpu.md",
        )  # fmt: skip
    return Check("gpu memory", OK, note)


def check_gsplat(has_cuda: bool, cfg: DoctorConfig) -> Check:
    """gsplat's CUDA kernels: ready, built now (with progress), or the pure-torch fallback."""
    from ..render import gsplat_kernels

    if not has_cuda:
        status = OK if cfg.device == "cpu" else WARN
        return Check(
            "gsplat cuda", status,
            "skipped: no CUDA; the native CPU rasteriser renders instead",
            "" if status == OK else "on a GPU, doctor builds gsplat's kernels once",
        )  # fmt: skip
    st = gsplat_kernels.status()
    fallback = "runs render with the pure-torch rasteriser instead (slower, no compilation)"
    if not st.ready and not st.can_build:
        return Check("gsplat cuda", WARN, f"kernels unavailable: {st.why}; {fallback}", st.why)
    if not st.ready and not cfg.build_gsplat:
        return Check("gsplat cuda", WARN, f"not built (--no-build); {fallback}",
                     "run doctor without --no-build to build them once")  # fmt: skip
    seconds = 0.0
    try:
        if not st.ready:
            seconds = gsplat_kernels.build(cfg.progress)
        diff = _gsplat_matches_cpu(cfg.device if cfg.device != "auto" else "cuda")
    except Exception as e:  # noqa: BLE001 - compiler, toolkit or runtime: all the same WARN
        return Check(
            "gsplat cuda", WARN, f"build or run failed: {type(e).__name__}: {str(e)[-300:]}; "
            f"{fallback}", gsplat_kernels.status().why or "see the error above",
        )  # fmt: skip
    built = f"built in {seconds:.0f} s" if seconds else "ready"
    text = f"{built}; max difference to the CPU renderer {diff:.1e}"
    if diff > 1e-3:
        return Check("gsplat cuda", WARN, text, "report this: gsplat and the CPU path disagree")
    return Check("gsplat cuda", OK, text)


def _gsplat_matches_cpu(device: str) -> float:
    """Render 200 Gaussians at 32 x 32 with gsplat and on the CPU; the largest difference."""
    import torch

    from .. import gaussians as G
    from ..cameras import orbit_cameras
    from ..render import render

    params = G.init_ball(G.InitConfig(num_points=200), torch.Generator().manual_seed(0))
    cams = orbit_cameras(torch.tensor([0.0, 90.0]), 20.0, 2.5, 49.0, 32, 32)
    bg = torch.ones(3)
    cpu = render(params, cams, bg, backend="auto").rgb
    gpu_params = {k: v.to(device) for k, v in params.items()}
    gpu = render(gpu_params, cams.to(device), bg.to(device), backend="gsplat").rgb
    return float((gpu.cpu() - cpu).abs().max())


def check_native_rasterizer() -> Check:
    from ..render import raster_native

    if raster_native.available():
        return Check("cpu rasteriser", OK, f"native kernel installed ({raster_native.isa()})")
    return Check(
        "cpu rasteriser", WARN,
        f"native kernel unavailable, the pure-torch path (3-7x slower) is used: "
        f"{raster_native.build_error()}",
        "install a C++ compiler with OpenMP (g++), reinstall the package (make setup, or "
        "pip install --no-deps --no-build-isolation -e .), then run doctor again",
    )  # fmt: skip


def _hub_cached(repo_id: str, cache_dir: str | None) -> str | None:
    """The cached snapshot folder of ``repo_id`` when its model_index.json and UNet weights are
    in the cache, else None."""
    from huggingface_hub import try_to_load_from_cache

    index = try_to_load_from_cache(repo_id, "model_index.json", cache_dir=cache_dir)
    if not isinstance(index, str):
        return None
    for name in WEIGHT_FILES:
        if isinstance(try_to_load_from_cache(repo_id, name, cache_dir=cache_dir), str):
            return str(Path(index).parent)
    return None


def check_model(kind: str, source: str, cfg: DoctorConfig) -> tuple[Check, float]:
    """The model check and the GiB a first run would download (0 when present)."""
    from ..guidance.base import GuidanceError
    from ..guidance.loading import hub_offline, looks_like_path, resolve_source

    name = f"{kind} model"
    try:
        resolved = resolve_source(source)
    except GuidanceError as e:
        what, _, fix = str(e).partition(": ")
        return Check(name, FAIL, what, fix or "pass a hub id (owner/name) or a local folder"), 0.0
    if looks_like_path(source):
        folder = Path(resolved)
        if not (folder / "model_index.json").is_file():
            return Check(
                name, FAIL, f"{folder} has no model_index.json: not a diffusers pipeline folder",
                f"save one with save_pretrained, or `hf download <id> --local-dir {folder}`",
            ), 0.0  # fmt: skip
        missing = [p for p in MODEL_PARTS[kind] if not (folder / p).is_dir()]
        if missing:
            return Check(
                name, FAIL, f"{folder} lacks {', '.join(m + '/' for m in missing)}",
                "download the whole pipeline (`hf download <id> --local-dir DIR`)",
            ), 0.0  # fmt: skip
        return Check(name, OK, f"local folder {folder}"), 0.0
    cached = _hub_cached(resolved, cfg.hf_cache)
    if cached:
        return Check(name, OK, f"{resolved} is in the Hugging Face cache ({cached})"), 0.0
    download_gib = _download_gib(kind)
    if hub_offline():
        from huggingface_hub import constants

        cache = cfg.hf_cache or constants.HF_HUB_CACHE
        return Check(
            name, FAIL, f"{resolved} is not in the Hugging Face cache ({cache}) and "
            "HF_HUB_OFFLINE=1 forbids downloading it",
            f"run `stabledreamer models download SET` (`models list` names the sets) or `hf "
            f"download {resolved}` with network (and unset HF_HUB_OFFLINE), or pass a "
            "local folder",
        ), download_gib  # fmt: skip
    return _check_hub(name, resolved, cfg), download_gib


def _download_gib(kind: str) -> float:
    """GiB of weight files a first run downloads: the fp16 variant's (2 bytes per parameter)
    with the default ``variant="fp16"``, else the fp32 files (4)."""
    from ..guidance.deepfloyd_if import DeepFloydIFConfig
    from ..guidance.stable_diffusion import StableDiffusionConfig
    from .full_size_models import param_count

    variant = (DeepFloydIFConfig() if kind == "if" else StableDiffusionConfig()).variant
    nbytes = 2 if variant == "fp16" else 4
    return sum(param_count(n) for n in DOWNLOAD_PARAMS[kind]) * nbytes / GIB


def _check_hub(name: str, repo_id: str, cfg: DoctorConfig) -> Check:
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    api = HfApi()
    try:
        api.model_info(repo_id, timeout=cfg.hub_timeout_s)
        api.auth_check(repo_id)
    except GatedRepoError:
        return Check(
            name, FAIL, f"{repo_id} is gated and this token has no access (or there is no token)",
            f"open https://huggingface.co/{repo_id} logged in, accept its licence, then "
            "`hf auth login` (or set HF_TOKEN)",
        )  # fmt: skip
    except RepositoryNotFoundError:
        return Check(
            name, FAIL, f"{repo_id}: no such repository on the hub (withdrawn or renamed?)",
            f"pass another hub id or a local folder (SD 2.1-base: {SD_21_BASE}); "
            "`stabledreamer models verify --online` checks every model set's ids",
        )  # fmt: skip
    except Exception as e:  # noqa: BLE001 - network errors come in many types
        return Check(
            name, FAIL, f"the hub cannot be reached: {type(e).__name__}: {str(e)[:200]}",
            "check the network or proxy (HTTPS_PROXY), or download on another machine and "
            "pass the folder",
        )  # fmt: skip
    return Check(
        name, WARN, f"{repo_id} is reachable but not downloaded yet",
        f"the first run downloads it (about {_download_gib(name.split()[0]):.0f} GiB of fp16 "
        f"weight files); `stabledreamer models download SET` does it now with progress (`hf "
        f"download {repo_id}` too: every file, more)",
    )  # fmt: skip


def check_token(if_source: str, if_check: Check) -> Check:
    from huggingface_hub import get_token

    from ..guidance.loading import looks_like_path

    if looks_like_path(if_source):
        return Check("hub token", OK, "not needed: DeepFloyd IF comes from a local folder")
    if get_token():
        return Check("hub token", OK, "a Hugging Face token is set (value not shown)")
    if if_check.status == OK:
        return Check("hub token", OK, "none set; not needed while DeepFloyd IF is in the cache")
    return Check(
        "hub token", FAIL, "none set, and DeepFloyd IF's repository is gated",
        f"open https://huggingface.co/{if_source} logged in, accept its licence (research, "
        "non-commercial), then `hf auth login` or set HF_TOKEN",
    )  # fmt: skip


def _free_gib(path: Path) -> tuple[Path, float]:
    p = path.expanduser().resolve()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p, shutil.disk_usage(p).free / GIB


def check_disk(out: str, hf_cache: str | None, download_gib: float) -> list[Check]:
    from huggingface_hub import constants

    checks = []
    where, free = _free_gib(Path(out))
    status = OK if free >= OUTPUT_NEED_GIB else FAIL
    checks.append(Check(
        "disk (runs)", status, f"{free:.1f} GiB free at {where}",
        "" if status == OK else f"free at least {OUTPUT_NEED_GIB:.0f} GiB or pass --out elsewhere",
    ))  # fmt: skip
    cache = Path(hf_cache or constants.HF_HUB_CACHE)
    where, free = _free_gib(cache)
    if download_gib == 0:
        checks.append(Check("disk (model cache)", OK, f"{free:.1f} GiB free at {where}"))
    elif free >= download_gib:
        checks.append(Check(
            "disk (model cache)", OK,
            f"{free:.1f} GiB free at {where}; downloads need about {download_gib:.0f} GiB",
        ))  # fmt: skip
    else:
        checks.append(Check(
            "disk (model cache)", FAIL,
            f"{free:.1f} GiB free at {where}; downloads need about {download_gib:.0f} GiB",
            "free space there, or set HF_HOME to a larger disk",
        ))  # fmt: skip
    return checks


def run_checks(cfg: DoctorConfig) -> list[Check]:
    from ..device import DeviceError, check_device_name

    checks = [check_python(), check_packages()]
    if checks[-1].status == FAIL:
        return checks
    try:
        check_device_name(cfg.device)
    except DeviceError as e:
        return [*checks, Check("cuda", FAIL, str(e), "pass --device auto, cpu, cuda or cuda:N")]
    cuda, total = check_cuda(cfg.device)
    checks += [cuda, check_gpu_memory(total, cfg.device)]
    checks.append(check_gsplat(total > 0, cfg))
    checks.append(check_native_rasterizer())
    uses_if = True
    if cfg.models:
        from ..models.sets import get_set

        uses_if = get_set(cfg.models).source_for("deepfloyd_if") is not None
    if uses_if:
        if_check, if_gib = check_model("if", cfg.if_model, cfg)
        token = check_token(cfg.if_model, if_check)
    else:
        if_check, if_gib = Check("if model", OK, f"not used by model set {cfg.models}"), 0.0
        token = Check("hub token", OK, f"not needed: model set {cfg.models} has no gated model")
    sd_check, sd_gib = check_model("sd", cfg.sd_model, cfg)
    checks += [if_check, sd_check, token]
    checks += check_disk(cfg.out, cfg.hf_cache, if_gib + sd_gib)
    return checks


# -- the command ----------------------------------------------------------------------------------


def format_checks(checks: list[Check], device: str = "auto") -> str:
    width = max(len(c.name) for c in checks)
    lines = []
    for c in checks:
        lines.append(f"[{c.status:>4}] {c.name:<{width}}  {c.detail}")
        if c.fix:
            lines.append(f"       {'':<{width}}  fix: {c.fix}")
    fails = sum(c.status == FAIL for c in checks)
    warns = sum(c.status == WARN for c in checks)
    ready = "ready for a CPU run (tiny models)" if device == "cpu" else "ready for a real run"
    verdict = ready if not fails else "not ready: fix the FAIL lines"
    lines.append(f"{fails} failed, {warns} warnings: {verdict}")
    return "\n".join(lines)


def cmd_doctor(args) -> int:
    from ..guidance.deepfloyd_if import DeepFloydIFConfig
    from ..guidance.stable_diffusion import StableDiffusionConfig
    from ..models.sets import get_set

    chosen = get_set(args.models) if getattr(args, "models", None) else None
    cfg = DoctorConfig(
        if_model=args.if_model
        or (chosen and chosen.source_for("deepfloyd_if"))
        or DeepFloydIFConfig().model,
        sd_model=args.sd_model
        or (chosen and chosen.source_for("stable_diffusion"))
        or StableDiffusionConfig().model,
        models=chosen.id if chosen else "",
        device=args.device or "auto",
        out=args.out,
        build_gsplat=not args.no_build,
        progress=lambda msg: print(msg, file=sys.stderr, flush=True),
    )
    checks = run_checks(cfg)
    if args.json:
        print(json.dumps([asdict(c) for c in checks], indent=2))
    else:
        print(format_checks(checks, cfg.device))
    return 1 if any(c.status == FAIL for c in checks) else 0
