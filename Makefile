# StableDreamer developer commands. `make demo` and `make test` set everything up first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

# Keep tests and tools from writing into the user's home: caches live in the repo's build folder.
export HF_HUB_OFFLINE := 1
export HF_HOME := $(CURDIR)/build/cache/hf
export XDG_CACHE_HOME := $(CURDIR)/build/cache/xdg
export TORCH_EXTENSIONS_DIR := $(CURDIR)/build/cache/torch_extensions
export TORCHINDUCTOR_CACHE_DIR := $(CURDIR)/build/cache/inductor
export BLENDER_USER_RESOURCES := $(CURDIR)/build/cache/blender

.PHONY: setup setup-farm native demo demo-text test lint format bench lock clean gpu-check

PKG_STAMP := $(VENV)/.package
PKG_SRC := setup.py backend/stabledreamer/render/native_build.py \
	$(wildcard backend/stabledreamer/render/csrc/*)

setup: $(STAMP) $(PKG_STAMP)

# torch first and pinned: an unpinned torch pulls a multi-GB CUDA build (see ENVIRONMENT notes).
$(STAMP): requirements.lock.txt pyproject.toml tools/gltf-validator/package-lock.json
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools==84.2.1 wheel
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -r requirements.lock.txt
	npm ci --prefix tools/gltf-validator --cache build/cache/npm --no-audit --no-fund  # glTF validator
	touch $(STAMP)

# The package itself, editable; the install compiles the native CPU rasteriser (setup.py), so it is
# redone when the C++ changes (and after the dependencies above).
$(PKG_STAMP): $(STAMP) $(PKG_SRC)
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(PKG_STAMP)

# The optional farm extra (Ray, for `serve --ray` and its tests), pinned in its own lock file.
FARM_STAMP := $(VENV)/.farm
setup-farm: setup $(FARM_STAMP)

$(FARM_STAMP): $(STAMP) requirements-farm.lock.txt
	$(PY) -m pip install --quiet -r requirements-farm.lock.txt
	touch $(FARM_STAMP)

# The native CPU rasteriser compiled in place, without reinstalling: for a checkout that is used
# through PYTHONPATH rather than installed (a git worktree sharing another checkout's .venv).
native:
	$(PY) setup.py --quiet build_ext --inplace

demo: setup
	$(VENV)/bin/stabledreamer demo --out runs/demo --overwrite
	@echo "demo outputs: runs/demo/ (gaussians.ply, mesh.glb, metrics.json, turntable.png, heldout.png, debug/)"

# Text to 3D offline: a catalogue prompt on the example-based prior (its bank built once, cached).
demo-text: setup
	$(VENV)/bin/stabledreamer generate "a toy creature" --prior catalogue --out runs/demo-text --overwrite
	@echo "demo-text outputs: runs/demo-text/ (gaussians.ply, mesh.glb, metrics.json, heldout.png, turntable.png, debug/)"

test: setup
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: setup
	$(PY) bench/render.py

# The farm extra's packages (requirements-farm.lock.txt) stay out of the main lock.
FARM_NAMES := $(shell grep -o '^[A-Za-z0-9_.-]*' requirements-farm.lock.txt | paste -sd'|')
lock: setup
	$(PY) -m pip freeze --exclude-editable | grep -v '^torch==' \
		| grep -viE '^($(FARM_NAMES))( @|==)' > requirements.lock.txt.new
	echo 'torch==2.13.0' >> requirements.lock.txt.new
	mv requirements.lock.txt.new requirements.lock.txt

clean:
	rm -rf $(VENV) build dist runs .pytest_cache .ruff_cache
	rm -f backend/stabledreamer/render/_gauss_cpu*.so backend/stabledreamer/render/_gauss_cpu*.pyd

# Verify a machine with an NVIDIA GPU (about 10 minutes): uses that machine's own CUDA torch, never
# `make setup` (the CPU build). Without a GPU it stops at once; ARGS=--dry-run runs every step on
# the CPU with stand-ins. ARGS=--wheels DIR installs missing packages from a local wheel folder.
.PHONY: gpu-check
gpu-check:
	$(PYTHON) tools/gpu_check.py $(ARGS)
