"""Seconds per SDS step, per stage, split into render / text (once) / UNet / VAE / backward.

Default: the tiny random IF-like and SD-like models (``stabledreamer tiny-models``), loaded through
the real guidance classes, on the CPU: stage 1 renders at 64^2 for IF, stage 2 at 512^2 through the
VAE (``--sd-resolution``), ``--views`` renders per step (the presets' camera batch), ``--gaussians``
Gaussians in a ball. One step is the trainer's: render, the shared ``sds_loss`` (encode, noise,
guided UNet pass), backward through the encoder and the renderer. Columns (seconds):
- render: ``render()`` forward; backward: the encoder's backward (VAE for SD) + the renderer's;
- text (once): loading the text encoder, encoding the 4 view prompts and the negative, freeing it;
- UNet: one guided pass (conditional + unconditional batch) for all views;
- VAE: the VAE encoder's forward (SD; IF only resizes).
Each figure is the minimum over ``--steps`` steps after one warm-up step.

``--full-size``: the published architectures with random weights (``full_size_models``: SD
2.1-base UNet + SD VAE + OpenCLIP-H text tower; IF-I-XL UNet + T5-XXL), so FLOPs and memory are
the real ones; weights in fp32 on the CPU, fp16 on CUDA. On a CPU only the SD stage runs (the
IF-I-XL UNet alone is 17 GB in fp32) with ``--full-views`` views (default 1: the VAE encoder keeps
about 3.4 GB of activations per 512^2 view in fp32), ``--full-steps`` steps. Peak memory is the
RSS high-water mark (CPU) or ``max_memory_allocated`` (CUDA) during the stage's steps.

FLOPs are counted by ``torch.utils.flop_counter`` from the models' shapes (on the ``meta`` device
for the full-size ones: nothing computed). The floor of a step is its FLOPs at the peak rate
``--peak-tflops`` (default 989: H100 SXM dense fp16/bf16); achieved TFLOP/s = FLOPs / measured s.

Run: ``OMP_NUM_THREADS=1 python bench/sds_step.py [--threads T] [--full-size]``.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "backend"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from stabledreamer import gaussians as G  # noqa: E402
from stabledreamer.cameras import sample_cameras  # noqa: E402
from stabledreamer.doctor.full_size_models import build, count_flops  # noqa: E402
from stabledreamer.guidance.base import GuidanceContext  # noqa: E402
from stabledreamer.optim.sds import sample_timesteps, sds_loss  # noqa: E402
from stabledreamer.presets import get_preset  # noqa: E402
from stabledreamer.render import render  # noqa: E402

PROMPT = "a ceramic teapot shaped like a pumpkin"


class Clock:
    """Wall time of named phases (CUDA-synchronised), minimum per phase over steps."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.times: dict[str, float] = {}

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def now(self) -> float:
        self.sync()
        return time.perf_counter()


class TimedGuidance:
    """A guidance whose ``encode`` and ``predict_noise`` are timed into ``step``."""

    def __init__(self, inner, clock: Clock) -> None:
        self.inner, self.clock = inner, clock
        self.num_train_timesteps = inner.num_train_timesteps
        self.step: dict[str, float] = {}

    def encode(self, rgb, generator=None):
        t = self.clock.now()
        x = self.inner.encode(rgb, generator)
        self.step["vae"] = self.clock.now() - t
        return x

    def alphas_sigmas(self, t):
        return self.inner.alphas_sigmas(t)

    def predict_noise(self, x_t, t, ctx):
        start = self.clock.now()
        eps = self.inner.predict_noise(x_t, t, ctx)
        self.step["unet"] = self.clock.now() - start
        return eps

    def decode(self, x):
        return self.inner.decode(x)

    def prepare(self, ctx):
        self.inner.prepare(ctx)

    def view_bank(self):
        return None


def time_steps(guidance, stage, cfg, params, views: int, steps: int, clock: Clock) -> dict:
    """Minimum seconds per phase over ``steps`` steps (after one warm-up step)."""
    timed = TimedGuidance(guidance, clock)
    gen = torch.Generator().manual_seed(0)
    best: dict[str, float] = {}
    for i in range(steps + 1):
        cams = sample_cameras(cfg.camera, stage.resolution, stage.resolution, gen, n=views)
        cams = cams.to(clock.device)
        bg = torch.rand(views, 3, generator=gen).to(clock.device)
        t0 = clock.now()
        out = render(params, cams, bg)
        t1 = clock.now()
        leaf = out.rgb.detach().requires_grad_()
        t = sample_timesteps(stage.noise, 0.5, views, guidance.num_train_timesteps, gen)
        ctx = GuidanceContext(cameras=cams, background=bg, step=i)
        sds = sds_loss(timed, leaf, ctx, t, stage.noise, gen)
        t2 = clock.now()
        sds.loss.backward()  # through the encoder (VAE for SD) to the renders
        out.rgb.backward(leaf.grad)  # through the renderer to the Gaussians
        t3 = clock.now()
        for p in params.values():
            p.grad = None
        phases = {"render": t1 - t0, **timed.step, "backward": t3 - t2, "step": t3 - t0}
        if i > 0 or steps == 0:
            best = {k: min(v, best.get(k, float("inf"))) for k, v in phases.items()}
    return best


def gaussians(n: int, device: torch.device) -> dict[str, torch.nn.Parameter]:
    init = G.init_ball(G.InitConfig(num_points=n), torch.Generator().manual_seed(0))
    return {k: torch.nn.Parameter(v.to(device)) for k, v in init.items()}


# -- tiny models --------------------------------------------------------------------------------


def guided_flops(unet, x_shape, text_shape, device) -> int:
    """FLOPs of one guided pass: the UNet on 2x the views (conditional + unconditional)."""
    x = torch.zeros(2 * x_shape[0], *x_shape[1:], device=device, dtype=unet.dtype)
    e = torch.zeros(2 * x_shape[0], *text_shape, device=device, dtype=unet.dtype)
    t = torch.full((2 * x_shape[0],), 500, device=device)
    with torch.no_grad():
        return count_flops(lambda: unet(x, t, encoder_hidden_states=e).sample)


def vae_flops(vae, views: int, res: int, device) -> int:
    """FLOPs of the VAE encoder's forward and its backward to the input (weights frozen)."""
    x = torch.zeros(views, 3, res, res, device=device, dtype=vae.dtype, requires_grad=True)

    def fwd_bwd():
        vae.encode(x).latent_dist.mean.sum().backward()

    return count_flops(fwd_bwd)


def run_tiny(views: int = 4, n_gaussians: int = 5000, steps: int = 3, sd_resolution: int = 512,
             model_dir: str | None = None) -> list[dict]:  # fmt: skip
    """The tiny-model rows: one per stage."""
    from stabledreamer.guidance.deepfloyd_if import DeepFloydIFGuidance
    from stabledreamer.guidance.stable_diffusion import StableDiffusionGuidance
    from stabledreamer.guidance.tiny_models import save_tiny_models

    device = torch.device("cpu")
    clock = Clock(device)
    cfg = get_preset("standard")
    cfg.stages[1].resolution = cfg.stable_diffusion.resolution = sd_resolution
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(model_dir or tmp)
        if not (root / "if").is_dir():
            save_tiny_models(root)
        cfg.deepfloyd_if.model, cfg.stable_diffusion.model = str(root / "if"), str(root / "sd")
        for stage, make in (
            (cfg.stages[0], lambda: DeepFloydIFGuidance(PROMPT, cfg.deepfloyd_if, device)),
            (cfg.stages[1], lambda: StableDiffusionGuidance(PROMPT, cfg.stable_diffusion, device)),
        ):
            guidance = make()
            start = clock.now()
            guidance.set_prompt(PROMPT + ", studio light")  # a new prompt: load, encode, free
            text_s = clock.now() - start
            params = gaussians(n_gaussians, device)
            best = time_steps(guidance, stage, cfg, params, views, steps, clock)
            res = guidance.cfg.resolution
            if stage.guidance == "stable_diffusion":
                z = res // 8
                flops = guided_flops(guidance.unet, (views, 4, z, z), _text(guidance), device)
                flops += vae_flops(guidance.vae, views, res, device)
            else:
                flops = guided_flops(guidance.unet, (views, 3, res, res), _text(guidance), device)
            kind = "SD" if stage.guidance == "stable_diffusion" else "IF"
            rows.append(
                {"stage": f"{stage.name} (tiny {kind})", "res": f"{stage.resolution}²",
                 "views": views, "text": text_s, **best, "flops": flops}
            )  # fmt: skip
            del guidance
    return rows


def _text(guidance) -> tuple[int, int]:
    return tuple(guidance.embeddings.cond.shape[1:])


# -- full-size models ---------------------------------------------------------------------------


def _peak_reset(device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        try:
            Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM
        except OSError:
            pass


def _peak_gib(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**20
    return float("nan")


def _placed(name: str, device, dtype, streamed: bool):
    """Full-size model ``name`` on ``device``, or in CPU memory streamed to it per forward (the
    memory tiers' offload: ``guidance.loading.enable_cpu_offload``)."""
    from stabledreamer.guidance.loading import enable_cpu_offload

    if not streamed or device.type != "cuda":
        return build(name, device, dtype)
    return enable_cpu_offload(build(name, "cpu", dtype), device)


def _full_sd_guidance(device, dtype, res: int, views: int, tier=None):
    """A ``StableDiffusionGuidance`` over full-size random SD 2.1-base modules (the real encode,
    predict_noise and alphas_sigmas), its text time and its FLOPs per step."""
    from diffusers import DDPMScheduler

    from stabledreamer.guidance.loading import ViewEmbeddings
    from stabledreamer.guidance.stable_diffusion import (
        StableDiffusionConfig,
        StableDiffusionGuidance,
    )

    cfg = StableDiffusionConfig(resolution=res)
    g = object.__new__(StableDiffusionGuidance)
    g.cfg, g.device, g.dtype = cfg, device, dtype
    clock = Clock(device)
    place = tier.stable_diffusion if tier else None
    text_encoder = _placed(
        "sd_text_encoder",
        device,
        dtype,
        bool(place and (place.text_encoder_offload or place.cpu_offload)),
    )
    ids = torch.randint(0, 49408, (5, 77), generator=torch.Generator().manual_seed(0))
    start = clock.now()
    with torch.no_grad():
        emb = text_encoder(ids.to(device))[0]
    text_s = clock.now() - start
    del text_encoder
    g.embeddings = ViewEmbeddings(PROMPT, "", cfg.view_prompts, lambda texts: emb)
    g.unet = _placed("sd_unet", device, dtype, bool(place and place.cpu_offload))
    g.vae = _placed("sd_vae", device, dtype, bool(place and place.cpu_offload))
    if tier is not None and tier.vae_gradient_checkpointing:
        from stabledreamer.guidance.vae_checkpointing import enable_vae_checkpointing

        enable_vae_checkpointing(g.vae)
    g.scheduler = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    g.scaling_factor = 0.18215
    g.num_train_timesteps, g.prediction_type = 1000, "epsilon"
    g._alphas_cumprod = g.scheduler.alphas_cumprod.to(torch.float32)
    return g, text_s


def full_size_flops(views: int, sd_res: int) -> dict[str, int]:
    """FLOPs per step of the full-size models, counted on ``meta`` (nothing computed)."""
    meta = torch.device("meta")
    z = sd_res // 8
    return {
        "if_unet": guided_flops(build("if_unet"), (views, 3, 64, 64), (77, 4096), meta),
        "sd_unet": guided_flops(build("sd_unet"), (views, 4, z, z), (77, 1024), meta),
        "sd_vae": vae_flops(build("sd_vae"), views, sd_res, meta),
    }


def run_full_size(views: int, steps: int, sd_resolution: int, tier_gb: int | None = None
                  ) -> list[dict]:  # fmt: skip
    """Full-size rows; ``tier_gb`` places the models as that memory tier does (CUDA)."""
    from stabledreamer.memory_tiers import MEMORY_TIERS

    tier = MEMORY_TIERS[tier_gb] if tier_gb else None
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    clock = Clock(device)
    cfg = get_preset("standard")
    cfg.stages[1].resolution = cfg.stable_diffusion.resolution = sd_resolution
    flops = full_size_flops(views, sd_resolution)
    rows = []
    if device.type == "cuda":
        rows.append(_full_if_row(device, dtype, cfg, views, steps, flops["if_unet"], tier))
    else:
        note = "needs a GPU (17 GB of fp32 weights)"
        rows.append(
            {"stage": "geometry (IF-I-XL)", "res": "64²", "views": views, "note": note,
             "flops": flops["if_unet"]}
        )  # fmt: skip
    _peak_reset(device)
    g, text_s = _full_sd_guidance(device, dtype, sd_resolution, views, tier)
    params = gaussians(5000, device)
    best = time_steps(g, cfg.stages[1], cfg, params, views, steps, clock)
    rows.append({"stage": "detail (SD 2.1-base)", "res": f"{sd_resolution}²", "views": views,
                 "text": text_s, **best, "flops": flops["sd_unet"] + flops["sd_vae"],
                 "peak_gib": _peak_gib(device)})  # fmt: skip
    return rows


def _full_if_row(device, dtype, cfg, views, steps, flops, tier=None) -> dict:
    """IF-I-XL (CUDA only): T5-XXL encodes the prompts and is freed, then the UNet steps."""
    from diffusers import DDPMScheduler

    from stabledreamer.guidance.deepfloyd_if import DeepFloydIFConfig, DeepFloydIFGuidance
    from stabledreamer.guidance.loading import ViewEmbeddings

    clock = Clock(device)
    _peak_reset(device)
    gcfg = DeepFloydIFConfig()
    g = object.__new__(DeepFloydIFGuidance)
    g.cfg, g.device, g.dtype = gcfg, device, dtype
    place = tier.deepfloyd_if if tier else None
    streamed_text = bool(place and (place.text_encoder_offload or place.cpu_offload))
    t5 = _placed("t5_xxl_encoder", device, dtype, streamed_text)  # fp16, wo in fp32, as loaded
    ids = torch.randint(0, 32128, (5, 77), generator=torch.Generator().manual_seed(0))
    start = clock.now()
    with torch.no_grad():
        emb = t5(ids.to(device))[0].to(dtype)
    text_s = clock.now() - start
    del t5
    torch.cuda.empty_cache()
    g.embeddings = ViewEmbeddings(PROMPT, "", gcfg.view_prompts, lambda texts: emb)
    g.unet = _placed("if_unet", device, dtype, bool(place and place.cpu_offload))
    g.scheduler = DDPMScheduler(beta_schedule="squaredcos_cap_v2", variance_type="learned_range")
    g.num_train_timesteps, g.prediction_type = 1000, "epsilon"
    g._alphas_cumprod = g.scheduler.alphas_cumprod.to(torch.float32)
    params = gaussians(5000, device)
    best = time_steps(g, cfg.stages[0], cfg, params, views, steps, clock)
    return {"stage": "geometry (IF-I-XL)", "res": "64²", "views": views, "text": text_s, **best,
            "flops": flops, "peak_gib": _peak_gib(device)}  # fmt: skip


# -- output -------------------------------------------------------------------------------------


def _s(row: dict, key: str) -> str:
    v = row.get(key)
    return "—" if v is None else (f"{v:.3f}" if v < 10 else f"{v:.1f}")


def table(rows: list[dict], peak_tflops: float) -> str:
    head = (
        "| stage | res | views | render | text (once) | UNet | VAE | backward | step | "
        "TFLOP/step (UNet+VAE) | achieved TFLOP/s | floor at peak (ms) | peak mem (GiB) |"
    )
    lines = [head, "|" + "---|" * 13]
    for r in rows:
        tf = r["flops"] / 1e12
        achieved = f"{tf / r['step']:.3g}" if r.get("step") else "—"
        floor_ms = f"{1e3 * tf / peak_tflops:.3g}"
        peak = f"{r['peak_gib']:.1f}" if r.get("peak_gib") else "—"
        step = _s(r, "step") if "note" not in r else r["note"]
        lines.append(
            f"| {r['stage']} | {r['res']} | {r['views']} | {_s(r, 'render')} | {_s(r, 'text')} | "
            f"{_s(r, 'unet')} | {_s(r, 'vae')} | {_s(r, 'backward')} | {step} | {tf:.3g} | "
            f"{achieved} | {floor_ms} | {peak} |"
        )
    return "\n".join(lines)


def preset_floors(views: int, peak_tflops: float) -> str:
    """Minutes per preset at the FLOP floor (UNet + VAE only) with the full-size models."""
    from stabledreamer.presets import TEXT_PRESETS

    lines = ["| preset | steps (IF + SD) | SD res | floor (min) | 3x floor goal (min) |",
             "|---|---|---|---|---|"]  # fmt: skip
    for name in TEXT_PRESETS:
        cfg = get_preset(name)
        s1, s2 = cfg.stages
        f = full_size_flops(views, cfg.stable_diffusion.resolution)  # the VAE's input size
        seconds = (s1.steps * f["if_unet"] + s2.steps * (f["sd_unet"] + f["sd_vae"])) / (
            peak_tflops * 1e12
        )
        lines.append(f"| {name} | {s1.steps} + {s2.steps} | {cfg.stable_diffusion.resolution}² | "
                     f"{seconds / 60:.2f} | {3 * seconds / 60:.2f} |")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--views", type=int, default=4, help="renders per step (tiny models)")
    ap.add_argument("--gaussians", type=int, default=5000)
    ap.add_argument("--steps", type=int, default=3, help="timed steps after a warm-up")
    ap.add_argument("--sd-resolution", type=int, default=512)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    ap.add_argument("--full-size", action="store_true", help="also the full-size architectures")
    ap.add_argument("--full-views", type=int, default=None, help="default: 1 on CPU, 4 on CUDA")
    ap.add_argument("--full-steps", type=int, default=1, help="timed full-size steps (+1 warm-up)")
    ap.add_argument(
        "--memory-tier",
        type=int,
        choices=(8, 12, 16, 24),
        default=None,
        help="full-size models placed as this memory tier places them (CUDA)",
    )
    ap.add_argument(
        "--cap-gib",
        type=float,
        default=None,
        help="cap this process's GPU memory (a smaller card on a larger one)",
    )
    ap.add_argument("--no-tiny", action="store_true", help="skip the tiny-model rows")
    ap.add_argument("--peak-tflops", type=float, default=989.0,
                    help="peak rate for the floor (default: H100 SXM dense fp16)")  # fmt: skip
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
    print(
        f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, {platform.machine()}, "
        f"{os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, CUDA: {gpu}"
    )
    if args.cap_gib and torch.cuda.is_available():
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, args.cap_gib * 2**30 / total))
        print(f"GPU memory capped at {args.cap_gib:g} GiB of {total / 2**30:.1f}")
    rows = [] if args.no_tiny else run_tiny(args.views, args.gaussians, args.steps,
                                            args.sd_resolution)  # fmt: skip
    if args.full_size:
        views = args.full_views or (4 if torch.cuda.is_available() else 1)
        rows += run_full_size(views, args.full_steps, args.sd_resolution, args.memory_tier)
    print(table(rows, args.peak_tflops))
    print()
    print(f"Floors per preset ({args.views} views per step, full-size models, "
          f"{args.peak_tflops:.0f} TFLOP/s):")  # fmt: skip
    print(preset_floors(args.views, args.peak_tflops))


if __name__ == "__main__":
    main()
