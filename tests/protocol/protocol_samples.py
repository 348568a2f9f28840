"""One valid instance of every message type (used by the round-trip and fuzz tests)."""

from __future__ import annotations

import hashlib

import numpy as np

from stabledreamer_protocol import messages as m


def gaussians(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "means": rng.normal(size=(n, 3)).astype(np.float32),
        "log_scales": rng.uniform(-7, 0, size=(n, 3)).astype(np.float32),
        "quats": rng.normal(size=(n, 4)).astype(np.float32),
        "rgb": rng.uniform(0, 1, size=(n, 3)).astype(np.float32),
        "opacities": rng.uniform(0, 1, size=n).astype(np.float32),
    }


def samples() -> list[m.Message]:
    rng = np.random.default_rng(1)
    chunk = rng.integers(0, 256, 1000, dtype=np.uint8)
    return [
        m.Hello(software="test", features=["preview_ack"]),
        m.Hello(
            re="abc",
            software="backend 0.1",
            device="cuda:0 NVIDIA H100",
            models=["deepfloyd-if-i-xl", "sd-2.1-base"],
            presets=["fast", "quality"],
            default_preset="fast",
            limits={"max_prompt_chars": 500},
            queue_length=2,
            workers=[
                m.WorkerInfo(
                    device="GPU 0: cuda (H100)", state="busy", job="job-1", jobs_run=3, loads=2
                ),
                m.WorkerInfo(device="GPU 1: cuda (H100)", state="idle"),
                m.WorkerInfo(device="GPU 2", state="starting"),
            ],
        ),
        m.Ping(),
        m.Pong(re="x1"),
        m.Submit(
            job="job-1",
            prompt="a ceramic teapot",
            negative="blurry",
            preset="fast",
            seed=42,
            overrides={"stage1.steps": 200, "nested": {"a": [1, 2.5, None]}},
            preview_points=50_000,
            init_points=rng.normal(size=(100, 3)).astype(np.float32),
            init_colors=rng.uniform(size=(100, 3)).astype(np.float32),
        ),
        m.Submit(
            job="job-2",
            target_format="arrays",
            target_name="Suzanne",
            target_vertices=rng.normal(size=(8, 3)).astype(np.float32),
            target_faces=np.array([[0, 1, 2], [2, 3, 7]], dtype=np.int32),
            target_colors=rng.uniform(size=(8, 3)).astype(np.float32),
        ),
        m.Submit(
            job="job-3",
            prompt="",
            target_format="glb",
            target_file=np.frombuffer(b"glTF\x02\x00\x00\x00" * 10, dtype=np.uint8),
        ),
        m.Cancel(job="job-1"),
        m.Status(job="job-1"),
        m.ListJobs(),
        m.Attach(job="job-1", preview_points=1000),
        m.Detach(job="job-1"),
        m.PreviewAck(job="job-1", step=300),
        m.Fetch(job="job-1", file="mesh.glb", index=3),
        m.JobState(
            job="job-1",
            state="running",
            stage="stage1",
            step=10,
            total=1000,
            seed=42,
            workers=[m.WorkerInfo(device="cpu", state="busy")],
        ),
        m.Jobs(
            jobs=[
                m.JobInfo(job="job-1", state="running", stage="stage2", step=5, total=9),
                m.JobInfo(job="job-2", state="queued", prompt="a cat", created=1.7e9),
            ]
        ),
        m.Progress(
            job="job-1",
            stage="stage1",
            step=100,
            total=1000,
            losses={"sds": 0.25, "opacity": 1e-3, "diverged": None},
            num_gaussians=12345,
            timestep=0.7,
            elapsed_s=12.5,
            eta_s=100.0,
        ),
        m.Preview.from_gaussians("job-1", **gaussians(257), stage="stage1", step=100),
        m.DebugImage(
            job="job-1",
            stage="stage1",
            step=100,
            timestep=0.5,
            labels=["render", "noisy", "x0"],
            image=rng.integers(0, 256, (64, 192, 3), dtype=np.uint8),
        ),
        m.Result(
            job="job-1",
            files=[
                m.ResultFile("mesh.glb", 2500, "0" * 64, "model/gltf-binary"),
                m.ResultFile("gaussians.ply", 0, hashlib.sha256(b"").hexdigest()),
            ],
            chunk_size=1024,
            metrics={"psnr": 27.5, "chamfer": None},
        ),
        m.ResultChunk(
            job="job-1",
            re="f1",
            file="mesh.glb",
            index=0,
            offset=0,
            sha256=hashlib.sha256(chunk).hexdigest(),
            data=chunk,
        ),
        m.Error(code="queue_full", message="8 jobs queued", hint="wait", re="r1"),
        m.Error(code="job_failed", message="CUDA out of memory", job="job-1"),
    ]


def samples_1_1() -> list[m.Message]:
    """Messages added in protocol 1.1 (separate: tests index ``samples()`` by position)."""
    return [
        m.Submit(job="job-4", target_format="demo", target_name="demo"),
        m.Delete(job="job-1"),
        m.GetLogs(since=10, max_lines=50),
        m.GetLogs(job="job-1"),
        m.Logs(lines=["12:00:01 INFO service: job job-1 queued"], cursor=11),
    ]


def samples_1_2() -> list[m.Message]:
    """Fields added in protocol 1.2: listing pages."""
    return [
        m.ListJobs(offset=40, limit=20),
        m.Jobs(jobs=[m.JobInfo(job="job-41", state="done")], offset=40, total=41, next=None),
        m.Jobs(jobs=[m.JobInfo(job="job-1", state="queued")], offset=0, total=9, next=1),
    ]


def samples_1_3() -> list[m.Message]:
    """The model messages and fields added in protocol 1.3 (feature ``models``)."""
    from stabledreamer_protocol import model_messages as mm

    sd = mm.ModelInfo(
        key="sd", title="Stable Diffusion 2.1-base", repo_id="sd2-community/sd", role="stage1+2",
        present=False, bytes_expected=2_600_000_000, licence="CreativeML Open RAIL++-M",
        hub_page="https://huggingface.co/sd2-community/sd",
    )  # fmt: skip
    info = mm.ModelSetInfo(
        id="sd-only", title="Commercial-friendly (SD only)", bytes_missing=2_600_000_000,
        download_bytes=2_600_000_000, memory_tier_gb=8, output_use="commercial use allowed",
        commercial=True, licences=[mm.Licence("CreativeML Open RAIL++-M", "https://x.y/l")],
        notes=["quality with real weights not measured yet"], models=[sd], download="running",
    )  # fmt: skip
    return [
        m.Submit(job="job-5", prompt="a lamp", models="sd-only", wait_for_models=True),
        m.Jobs(jobs=[m.JobInfo(job="job-5", state="queued", models="sd-only")]),
        mm.ListModels(),
        mm.DownloadModels(set="sd-only"),
        mm.CancelDownload(set="sd-only"),
        mm.SetToken(token="hf_abc"),
        mm.SetToken(token=""),
        mm.Models(sets=[info], default="if-sd", token_set=True, token_source="file"),
        mm.DownloadState(
            set="sd-only",
            state="running",
            bytes_done=10,
            bytes_total=100,
            files_done=1,
            files_total=9,
            rate_bps=5e6,
            eta_s=18.0,
            elapsed_s=2.0,
            model="sd2-community/sd",
        ),  # fmt: skip
        mm.DownloadState(
            set="if-sd",
            state="failed",
            code="gated",
            message="DeepFloyd/IF-I-XL-v1.0 is gated",
            link="https://huggingface.co/DeepFloyd/IF-I-XL-v1.0",
        ),  # fmt: skip
        mm.TokenState(set=True, source="file"),
    ]


def samples_1_4() -> list[m.Message]:
    """Fields added in protocol 1.4: follow-ups, the active listing and its new fields."""
    info = m.JobInfo(job="job-7", state="queued", queue_position=2, seed=5, parent="job-1",
                     mode="refine", mine=False)  # fmt: skip
    return [
        m.Submit(job="job-7", prompt="a blue chair", parent="job-1", mode="refine"),
        m.Submit(job="job-8", parent="job-1", mode="continue", steps=300, seed=4),
        m.ListJobs(active=True),
        m.Jobs(jobs=[info], offset=0, total=1, next=None, others_active=3),
    ]


def all_samples() -> list[m.Message]:
    return samples() + samples_1_1() + samples_1_2() + samples_1_3() + samples_1_4()
