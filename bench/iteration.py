"""Iterating prompts: how soon a job starts training, cold (a fresh worker) and warm (the models
still loaded from the previous job), through the real service and client.

For each model set a ``stabledreamer serve`` (one worker, CURVE off, loopback) is started and,
once its worker is up and idle (torch imported, no model loaded: today's prewarmed process),
three text jobs are submitted one after another:

- ``cold``: the first job; the worker loads the guidance models;
- ``warm, new prompt``: another prompt; the models are reused, the prompt encoded again by the
  kept text encoder;
- ``warm, same prompt``: the first prompt with another seed (variations); nothing to load or
  encode.

Measured per job, in the client:

- submit -> first step: from ``submit`` to the start of the first guided step, the step itself
  excluded: the arrival of the job's first ``progress`` minus its ``elapsed_s`` (the trainer's
  stage clock starts once the stage's guidance is built and ready for the first step's cameras,
  so the difference is what came before the step: queueing, config, initial Gaussians, model
  loading and prompt encoding, the first cameras' view prompts included);
- submit -> first preview: from ``submit`` to the job's first ``preview`` event (sent after its
  first guided step, so the step is included).

Model sets: the tiny random models (``stabledreamer tiny-models``; stage 1 IF-like, stage 2
SD-like) and the full-size Stable Diffusion 2.1-base architecture with random weights
(``doctor.full_size_models``: UNet, VAE, OpenCLIP-H text tower; about 1.3 G parameters), saved
once as fp16 safetensors under ``build/cache/bench-iteration`` (as SD 2.1-base ships them; the
CPU upcasts to fp32 on load). The full-size jobs run both stages on SD at a 64-px render (an 8x8
latent) so the step is cheap; the step is excluded from the figure anyway.

Goals (issue 15): with full-size SD, the first step at least 5x sooner warm than cold; with the
tiny models, a warm second job's first preview within 2 s of submit.

Run: ``python bench/iteration.py [--skip-full]`` (a few minutes on a small CPU; the first run
also writes the full-size model, about 2.6 GB).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "backend"), str(ROOT / "shared")]
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from stabledreamer_protocol import Error, Preview, Progress  # noqa: E402
from stabledreamer_protocol.client import Client, ResultDownloaded  # noqa: E402

CACHE = ROOT / "build" / "cache" / "bench-iteration"
SMALL = {
    "init.num_points": 1000,
    "camera.batch_size": 1,
    "eval_resolution": 32,
    "mesh.enabled": False,
    "detail.resolution": 64,
    "stable_diffusion.resolution": 64,
}
TINY_JOB = {**SMALL, "geometry.steps": 2, "detail.steps": 1}
FULL_JOB = {**SMALL, "geometry.guidance": "stable_diffusion", "geometry.steps": 1,
            "detail.steps": 1}  # fmt: skip
PROMPTS = ("a red wooden chair", "a blue ceramic vase")


def tiny_models() -> Path:
    out = CACHE / "tiny"
    if not (out / "sd" / "unet").is_dir():
        from stabledreamer.guidance.tiny_models import save_tiny_models

        save_tiny_models(out)
    return out


def full_size_sd() -> Path:
    """The SD 2.1-base architecture with random weights as a diffusers folder (fp16 files)."""
    out = CACHE / "sd21-base-random"
    done = out / "done"
    if done.is_file():
        _model_index(out)
        return out
    import torch
    from diffusers import DDIMScheduler

    from stabledreamer.doctor.full_size_models import build
    from stabledreamer.guidance.tiny_models import tiny_clip_tokenizer

    print(f"writing the full-size random-weight SD to {out} (once)", flush=True)
    torch.manual_seed(0)
    for name, sub in (("sd_unet", "unet"), ("sd_vae", "vae"), ("sd_text_encoder", "text_encoder")):
        model = build(name, device="cpu", dtype=torch.float16)
        model.save_pretrained(out / sub, safe_serialization=True, variant="fp16")
        del model
    tiny_clip_tokenizer().save_pretrained(out / "tokenizer")  # ids fit the full 49408 vocab
    DDIMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                  beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False,
                  steps_offset=1).save_pretrained(out / "scheduler")  # fmt: skip
    _model_index(out)
    done.write_text("ok\n")
    return out


def _model_index(out: Path) -> None:
    """A pipeline's ``model_index.json`` (what says "a diffusers folder" to the preflight)."""
    import json

    index = {
        "_class_name": "StableDiffusionPipeline",
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "scheduler": ["diffusers", "DDIMScheduler"],
        "safety_checker": [None, None],
        "feature_extractor": [None, None],
        "requires_safety_checker": False,
    }
    (out / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Service:
    def __init__(self, state: Path, models: dict[str, Path]) -> None:
        self.endpoint = f"tcp://127.0.0.1:{free_port()}"
        cmd = [sys.executable, "-m", "stabledreamer", "serve", "--no-curve", "--bind",
               self.endpoint, "--state", str(state)]  # fmt: skip
        for key, path in models.items():
            cmd += [f"--{key}-model", str(path)]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path[:2])}
        self.log = open(state.parent / f"{state.name}.log", "ab")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        self.client = Client(self.endpoint).connect()

    def wait_idle(self, timeout_s: float = 300.0) -> None:
        """Until the worker is started and idle (torch imported, nothing loaded or running)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, "the service exited"
            try:
                hello = self.client.handshake(timeout_s=5)
                if hello.workers and all(w.state == "idle" for w in hello.workers):
                    return
            except Exception:  # not listening yet
                pass
            time.sleep(0.2)
        raise TimeoutError("the worker did not become idle")

    def job(self, prompt: str, seed: int, overrides: dict) -> dict[str, float]:
        c = self.client
        seen: dict[str, float] = {}

        def watch(e) -> bool:
            now = time.monotonic()
            if getattr(e, "job", None) != job:
                return False
            if isinstance(e, Error):
                raise RuntimeError(f"job failed: [{e.code}] {e.message}")
            if isinstance(e, Progress) and "step" not in seen:
                seen["step"] = now - e.elapsed_s
            if isinstance(e, Preview) and "preview" not in seen:
                seen["preview"] = now
            return isinstance(e, ResultDownloaded)

        t0 = time.monotonic()
        job = c.submit(prompt, preset="preview", seed=seed, overrides=overrides,
                       preview_points=10_000)  # fmt: skip
        if c.wait_for(watch, 1800) is None:
            raise TimeoutError(f"job {job} did not finish")
        self.wait_idle()
        (w,) = c.handshake(timeout_s=10).workers
        return {"step": seen["step"] - t0, "preview": seen["preview"] - t0, "loads": w.loads}

    def close(self) -> None:
        self.client.close()
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def run_set(name: str, models: dict[str, Path], overrides: dict, tmp: Path) -> list[tuple]:
    svc = Service(tmp / name.replace(" ", "-"), models)
    try:
        svc.wait_idle()
        rows = []
        for label, prompt, seed in (
            ("cold", PROMPTS[0], 1),
            ("warm, same prompt", PROMPTS[0], 2),
            ("warm, new prompt", PROMPTS[1], 1),
            ("warm, earlier prompt", PROMPTS[0], 3),
        ):
            r = svc.job(prompt, seed, overrides)
            rows.append((name, label, r["step"], r["preview"], r["loads"]))
            print(f"  {name:>14} | {label:<17} | {r['step']:7.2f} s | {r['preview']:7.2f} s",
                  flush=True)  # fmt: skip
        return rows
    finally:
        svc.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--skip-full", action="store_true", help="tiny models only")
    ap.add_argument("--only-full", action="store_true", help="full-size SD only")
    args = ap.parse_args()
    sets = [("tiny", {"if": tiny_models() / "if", "sd": tiny_models() / "sd"}, TINY_JOB)]
    if args.only_full:
        sets = []
    if not args.skip_full:
        sets.append(("full-size SD", {"sd": full_size_sd()}, FULL_JOB))
    rows = []
    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-iteration-") as tmp:
        for name, models, overrides in sets:
            rows += run_set(name, models, overrides, Path(tmp))
    machine = platform.processor() or platform.machine()
    load_end = os.getloadavg()[0]
    print(f"\n{datetime.date.today()}, {machine}, {os.cpu_count()} CPUs, load average "
          f"{load_start:.1f} at the start and {load_end:.1f} at the end; one worker\n")  # fmt: skip
    print("| models | job | submit -> first step | vs cold | first step itself "
          "| submit -> first preview | models loaded |")  # fmt: skip
    print("|---|---|---:|---:|---:|---:|---:|")
    cold = {}
    for name, label, step, preview, loads in rows:
        cold.setdefault(name, step)
        ratio = cold[name] / step
        print(f"| {name} | {label} | {step:.2f} s | {ratio:.1f}x | {preview - step:.2f} s "
              f"| {preview:.2f} s | {loads} |")  # fmt: skip
    print()
    for name, label, step, preview, _ in rows:
        if name == "full-size SD" and label != "cold":
            ok = cold[name] / step >= 5
            print(f"goal, full-size SD first step >= 5x sooner warm than cold ({label}): "
                  f"{cold[name] / step:.1f}x, {'met' if ok else 'NOT met'}")  # fmt: skip
        if name == "tiny" and label != "cold":
            print(f"goal, tiny first preview <= 2 s after submit when warm ({label}): "
                  f"{preview:.2f} s, {'met' if preview <= 2 else 'NOT met'}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
