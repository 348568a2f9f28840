"""Test environment: offline hubs and side effects redirected into a temp folder."""

import os
import tempfile

_cache = tempfile.mkdtemp(prefix="stabledreamer-tests-")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
for var, sub in [
    ("HF_HOME", "hf"),
    ("XDG_CACHE_HOME", "xdg"),
    ("TORCH_EXTENSIONS_DIR", "torch_extensions"),
    ("TORCHINDUCTOR_CACHE_DIR", "inductor"),
    ("BLENDER_USER_RESOURCES", "blender"),
]:
    os.environ.setdefault(var, os.path.join(_cache, sub))
