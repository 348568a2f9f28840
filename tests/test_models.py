"""Model sets: status, downloads through the real huggingface_hub client against a local hub on
loopback (progress, resume, cancel, gated, full disk, no network), the token store."""

import os
import stat
import threading
import time

import pytest

from stabledreamer.atomic import DiskFullError
from stabledreamer.models import download, sets, store, token
from stabledreamer.models.errors import (
    DownloadCancelled,
    GatedModelError,
    ModelsMissingError,
    NoNetworkError,
    UnknownModelError,
)
from stabledreamer.models.testing_hub import LocalHub

UNET = "unet/diffusion_pytorch_model.fp16.safetensors"


@pytest.fixture
def tiny_fp16(tiny_models_fp16):
    return tiny_models_fp16


@pytest.fixture
def online(monkeypatch):
    """Downloads allowed in this process (the suite runs with HF_HUB_OFFLINE=1)."""
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", constants.DOWNLOAD_CHUNK_SIZE)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", constants.HF_HUB_DISABLE_XET)


def _hub(tiny, monkeypatch, **kw):
    repos = {sets.SD_21_BASE: tiny / "sd", sets.IF_I_XL: tiny / "if"}
    gated = {sets.IF_I_XL: {"hf_good"}}
    h = LocalHub(repos, gated=gated, chunk_bytes=16 * 1024, **kw).start()
    monkeypatch.setenv("HF_ENDPOINT", h.url)
    return h


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sets_are_the_single_source_of_the_hub_ids():
    from stabledreamer.guidance.deepfloyd_if import DeepFloydIFConfig
    from stabledreamer.guidance.stable_diffusion import StableDiffusionConfig

    assert set(sets.SET_IDS) >= {"if-sd", "sd-only", "if-sd-small"}
    assert DeepFloydIFConfig().model == sets.get_set("if-sd").source_for("deepfloyd_if")
    assert StableDiffusionConfig().model == sets.get_set("sd-only").source_for("stable_diffusion")
    sd_only, if_sd = sets.get_set("sd-only"), sets.get_set("if-sd")
    assert sd_only.commercial and not sd_only.gated and sd_only.stage1 == "stable_diffusion"
    assert not if_sd.commercial and if_sd.gated and "non-commercial" in if_sd.output_use
    for s in sets.MODEL_SETS.values():
        d = s.to_dict()
        assert d["download_bytes"] > 0 and d["models"][0]["hub_page"].startswith("https://")
        assert all(m.confirmed for m in s.models)
        assert s.memory_tier_gb in (8, 12, 16, 24)
    with pytest.raises(Exception, match="unknown model set 'nope'"):
        sets.get_set("nope")


def test_download_progress_resume_and_status(tiny_fp16, tmp_path, monkeypatch, online):
    cache = tmp_path / "hub"
    before = store.set_status("sd-only", cache)
    assert not before.present and before.bytes_missing == sets.get_set("sd-only").download_bytes
    with pytest.raises(ModelsMissingError) as e:
        store.require_set("sd-only", cache)
    assert e.value.code == "models_missing" and "stabledreamer models download sd-only" in str(
        e.value
    )

    h = _hub(tiny_fp16, monkeypatch, drop_once={UNET})
    try:
        seen = []
        st = download.download_set("sd-only", cache_dir=cache, progress=seen.append,
                                   chunk_bytes=16 * 1024, min_interval_s=0)  # fmt: skip
    finally:
        h.stop()
    assert st.present and st.models[0].exact and not st.models[0].missing
    from huggingface_hub import constants

    assert constants.HF_HUB_DISABLE_XET  # plain HTTP: the cancel and resume tested here
    last = seen[-1]
    assert last.bytes_done == last.bytes_total == st.bytes_present > 0
    assert last.files_done == last.files_total
    assert len(seen) > 10 and all(b.bytes_done <= b.bytes_total for b in seen)
    assert any(p.rate_bps > 0 for p in seen)
    # The server dropped the UNet half-way: the client resumed it with a Range request.
    ranged = h.seen("GET", UNET)
    assert [r.range for r in ranged if r.range] and ranged[-1].range.startswith("bytes=")
    store.require_set("sd-only", cache)  # no error now
    # A second download fetches nothing: every file is complete in the cache.
    h = _hub(tiny_fp16, monkeypatch)
    try:
        download.download_set("sd-only", cache_dir=cache)
    finally:
        h.stop()
    assert not h.seen("GET", "/resolve/")
    # remove: the set is missing again
    assert store.remove_set("sd-only", cache)
    assert not store.set_status("sd-only", cache).present


def test_gated_repo_gives_the_page_to_accept(tiny_fp16, tmp_path, monkeypatch, online):
    h = _hub(tiny_fp16, monkeypatch)
    try:
        with pytest.raises(GatedModelError) as e:
            download.download_set("if-sd", cache_dir=tmp_path)
        assert f"{h.url}/{sets.IF_I_XL}" in str(e.value) and "accept its licence" in str(e.value)
        with pytest.raises(GatedModelError):  # a token without access: 403
            download.download_set("if-sd", cache_dir=tmp_path, token="hf_other")
        st = download.download_set("if-sd", cache_dir=tmp_path, token="hf_good")
    finally:
        h.stop()
    assert st.present and [m.key for m in st.models] == ["if_unet", "t5", "sd"]
    assert any(r.token for r in h.seen("GET", "/resolve/"))


def test_cancel_stops_a_slow_download_promptly_and_the_next_resumes(
    tiny_fp16, tmp_path, monkeypatch, online
):
    h = _hub(tiny_fp16, monkeypatch, slow_s_per_chunk=0.05)
    cancel = threading.Event()
    seen = []

    def progress(p):
        seen.append(p)
        if p.bytes_done > 300 * 1024:  # inside the UNet (the text encoder is the first 69 kB)
            cancel.set()

    start = time.monotonic()
    try:
        with pytest.raises(DownloadCancelled):
            download.download_set("sd-only", cache_dir=tmp_path, progress=progress, cancel=cancel,
                                  chunk_bytes=16 * 1024, min_interval_s=0)  # fmt: skip
        took = time.monotonic() - start
        assert took < 5.0, took  # the whole set takes ~7 s at this pace (2.2 MB)
        assert len(seen) >= 2
        assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".incomplete")]
        # What was fetched stays as a .partial: no blob, no snapshot link, not counted.
        partials = list(tmp_path.rglob("*.partial"))
        assert len(partials) == 1 and partials[0].stat().st_size > 0
        kept = partials[0].stat().st_size
        st = store.set_status("sd-only", tmp_path)
        assert not st.present and st.bytes_partial == kept
        assert not list(tmp_path.rglob("snapshots/*/unet/*"))
        # The next download goes on from there with a Range request.
        h.slow_s_per_chunk = 0
        h.requests.clear()
        got = []
        st = download.download_set("sd-only", cache_dir=tmp_path, progress=got.append,
                                   min_interval_s=0)  # fmt: skip
    finally:
        h.stop()
    assert st.present and not list(tmp_path.rglob("*.partial"))
    assert got[0].bytes_done == kept  # counted as done from the start
    ranges = [r.range for r in h.seen("GET", UNET) if r.range]
    assert ranges == [f"bytes={kept}-"]
    from stabledreamer.models.verify import verify_set

    assert verify_set("sd-only", cache_dir=tmp_path, hashes=True).ok  # the resumed file is whole


def test_disk_full_and_no_network_and_unknown_repo(tiny_fp16, tmp_path, monkeypatch, online):
    h = _hub(tiny_fp16, monkeypatch)
    try:
        monkeypatch.setattr(download, "free_space", lambda path: 1000)
        with pytest.raises(DiskFullError) as e:
            download.download_set("sd-only", cache_dir=tmp_path)
        assert "to download" in str(e.value) and e.value.code == "disk_full"
        assert not h.seen("GET", "/resolve/")  # checked before the first byte
    finally:
        h.stop()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    with pytest.raises(NoNetworkError, match="cannot reach the model hub"):
        download.download_set("sd-only", cache_dir=tmp_path)
    h2 = LocalHub({"someone/else": tiny_fp16 / "sd"}).start()
    monkeypatch.setenv("HF_ENDPOINT", h2.url)
    try:
        with pytest.raises(UnknownModelError, match="no such repository"):
            download.download_set("sd-only", cache_dir=tmp_path)
    finally:
        h2.stop()


def test_offline_mode_refuses_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(NoNetworkError, match="HF_HUB_OFFLINE"):
        download.download_set("sd-only", cache_dir=tmp_path)


def test_local_folder_counts_as_present(tiny_fp16, tmp_path):
    st = store.set_status("sd-only", tmp_path, folders={"stable_diffusion": str(tiny_fp16 / "sd")})
    assert st.present and st.models[0].source == "folder"
    st = store.set_status("sd-only", tmp_path, folders={"stable_diffusion": str(tmp_path / "x")})
    assert not st.present


def test_token_is_stored_owner_only_and_never_shown(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    path = tmp_path / "cfg" / "hf_token"
    monkeypatch.setenv("STABLEDREAMER_HF_TOKEN_FILE", str(path))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # no hf auth login token
    assert token.load_token() is None and token.describe() == "no hub token set"
    token.save_token("  hf_secret123\n")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert token.load_token() == "hf_secret123"
    assert "hf_secret123" not in token.describe() and str(path) in token.describe()
    with pytest.raises(token.TokenError) as e:
        token.save_token("hf secret with spaces")
    assert "secret" not in str(e.value)
    os.chmod(path, 0o644)
    with pytest.raises(token.TokenError, match="chmod 600"):
        token.load_token()
    monkeypatch.setenv("HF_TOKEN", "hf_env")
    assert token.token_source() == ("hf_env", "HF_TOKEN")
    assert token.clear_token() and not path.exists()


def test_background_download_for_the_service(tiny_fp16, tmp_path, monkeypatch, online):
    from stabledreamer.models.background import CANCELLED, DONE, FAILED, Downloads

    downloads = Downloads()
    h = _hub(tiny_fp16, monkeypatch, slow_s_per_chunk=0.05)
    try:
        d = downloads.start("sd-only", cache_dir=tmp_path, chunk_bytes=16 * 1024, min_interval_s=0)
        assert downloads.start("sd-only", cache_dir=tmp_path) is d  # one per set
        deadline = time.monotonic() + 10
        while d.state()["progress"] is None or d.state()["progress"]["bytes_done"] == 0:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert downloads.cancel("sd-only") and d.join(10)
        assert d.state()["state"] == CANCELLED
        h.slow_s_per_chunk = 0
        d2 = downloads.start("sd-only", cache_dir=tmp_path)
        assert d2 is not d and d2.join(30)
        s = d2.state()
        assert s["state"] == DONE and s["status"]["present"] and s["error"] is None
        d3 = downloads.start("if-sd", cache_dir=tmp_path)  # gated, no token
        assert d3.join(30) and d3.state()["state"] == FAILED
        assert d3.state()["error"]["code"] == "model_unavailable"
        assert "accept its licence" in d3.state()["error"]["message"]
        assert d3.state()["error"]["page"] == f"{h.url}/{sets.IF_I_XL}"
    finally:
        h.stop()


def test_two_downloads_of_one_set_at_once_share_the_work(tiny_fp16, tmp_path, monkeypatch, online):
    """The CLI and the service may download the same set at the same time: one writer per
    weight file (a lock), the other finds the finished blob; both end with the whole set."""
    from stabledreamer.models.verify import verify_set

    h = _hub(tiny_fp16, monkeypatch, slow_s_per_chunk=0.005)
    errors = []

    def one():
        try:
            download.download_set("sd-only", cache_dir=tmp_path, chunk_bytes=16 * 1024)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    try:
        threads = [threading.Thread(target=one) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    finally:
        h.stop()
    assert not errors, errors
    weights = [r for r in h.seen("GET", "/resolve/") if r.path.endswith(".safetensors")]
    assert len(weights) == 3  # each weight file fetched once
    assert verify_set("sd-only", cache_dir=tmp_path, hashes=True).ok


def test_the_models_package_imports_no_torch():
    """The service answers model questions at once: nothing here may pull torch in."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    mods = ["sets", "store", "download", "token", "verify", "background", "commands",
            "testing_hub", "hub", "errors"]  # fmt: skip
    code = "; ".join(f"import stabledreamer.models.{m}" for m in mods)
    code += "; import sys; assert 'torch' not in sys.modules, 'torch imported'"
    env = {"PYTHONPATH": f"{root / 'backend'}:{root / 'shared'}", "PATH": "/usr/bin:/bin"}
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr


def test_the_stored_token_reaches_model_loads_without_overriding_hf_token(tmp_path, monkeypatch):
    from stabledreamer.models.token import export_stored_token, save_token

    path = tmp_path / "hf_token"
    monkeypatch.delenv("HF_TOKEN", raising=False)
    assert export_stored_token(path) is False  # nothing stored: nothing set
    assert "HF_TOKEN" not in os.environ
    save_token("hf_" + "s" * 30, path)
    assert export_stored_token(path) is True and os.environ["HF_TOKEN"] == "hf_" + "s" * 30
    monkeypatch.setenv("HF_TOKEN", "hf_" + "e" * 30)  # the user's own environment wins
    assert export_stored_token(path) is False and os.environ["HF_TOKEN"] == "hf_" + "e" * 30
