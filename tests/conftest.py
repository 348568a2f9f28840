"""Test environment: offline hubs and side effects redirected into a temp folder."""

import os
import tempfile

import pytest

_cache = tempfile.mkdtemp(prefix="stabledreamer-tests-")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
for var, sub in [
    ("HF_HOME", "hf"),
    ("XDG_CACHE_HOME", "xdg"),
    ("TORCH_EXTENSIONS_DIR", "torch_extensions"),
    ("TORCHINDUCTOR_CACHE_DIR", "inductor"),
    ("BLENDER_USER_RESOURCES", "blender"),
    ("STABLEDREAMER_HF_TOKEN_FILE", "cfg/hf_token"),  # a backend told a token stores it here
]:
    os.environ.setdefault(var, os.path.join(_cache, sub))


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """Tiny random IF-like (``if/``) and SD-like (``sd/``) pipelines, saved once per session."""
    from stabledreamer.guidance.tiny_models import save_tiny_models

    d = tmp_path_factory.mktemp("tiny-models-shared")
    save_tiny_models(d)
    return d


@pytest.fixture(scope="session")
def tiny_models_fp16(tmp_path_factory):
    """The tiny pipelines with fp16 weight files next to the fp32 ones, as the real repositories
    ship them (the model sets download the fp16 files), saved once per session."""
    from stabledreamer.guidance.tiny_models import save_tiny_models

    d = tmp_path_factory.mktemp("tiny-models-fp16")
    save_tiny_models(d, variant="fp16")
    return d
