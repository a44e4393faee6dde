# Two commands do all set-up on a fresh machine: `make serve` and `make test`.
# On a CPU machine they use .venv (CPU torch, ONNX Runtime, OpenVINO). On a machine with an NVIDIA
# GPU they use .venv-gpu (CUDA 13 torch, TensorRT, onnxruntime-gpu), and `make serve` builds
# TensorRT engines for this GPU first. `make serve GPU=` takes the CPU path on a GPU machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed-cpu
MODEL ?= stabilityai/sdxl-turbo
ENGINE ?= auto
ENGINE_DIR ?= build/engines
HOST ?= 127.0.0.1
PORT ?= 5000
PYTEST_ARGS ?=

# 1 when this machine has an NVIDIA GPU (nvidia-smi lists one), else empty.
GPU := $(shell nvidia-smi -L >/dev/null 2>&1 && echo 1)

# The shared cache tier's tests and benchmarks start a real Redis server (benchmarks/redis_server.py).
REDIS_SERVER := $(shell command -v redis-server)

# nginx for tests/test_load_balancer.py and `nginx -t` in tests/test_deploy_manifests.py (Debian puts it in /usr/sbin).
NGINX := $(shell command -v nginx || command -v /usr/sbin/nginx)

# The browser tests drive Debian's Chromium (Playwright's own browser download cannot run here).
CHROMIUM := $(shell command -v chromium || command -v chromium-browser)

.PHONY: browser redis nginx install peers-install serve test bench bench-quick engines gpu-install driver-check gpu-check gpu-check-torch gpu-wheels clean

# ---- the CPU environment ----------------------------------------------------------------------

# CPU install: torch pinned to the CPU build (constraints/cpu.txt) so no CUDA wheel is ever pulled in.
$(STAMP): pyproject.toml constraints/cpu.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -c constraints/cpu.txt torch==2.13.0
	$(PIP) install --quiet -c constraints/cpu.txt -e '.[onnx,openvino,test,bench]'
	touch $@

install: $(STAMP)

# ---- the peers' environment -------------------------------------------------------------------
# What the benchmark times beside us (benchmarks/peers.py): OpenVINO GenAI and optimum-intel, pinned
# by constraints/peers.txt. Its own environment: optimum-intel needs an older transformers than ours.
# optimum-intel requires torchvision, whose Linux wheel on PyPI is a CUDA build: beside the CPU torch
# it breaks the import of transformers, and nothing the peers run uses it, so it is removed.
VENV_PEERS := .venv-peers
PY_PEERS := $(VENV_PEERS)/bin/python
PEERS_STAMP := $(VENV_PEERS)/.installed-peers

$(PEERS_STAMP): constraints/peers.txt
	$(PYTHON) -m venv $(VENV_PEERS)
	$(PY_PEERS) -m pip install --quiet --upgrade pip
	$(PY_PEERS) -m pip install --quiet -c constraints/peers.txt torch==2.13.0
	$(PY_PEERS) -m pip install --quiet -c constraints/peers.txt 'optimum-intel[diffusers]' openvino-genai accelerate
	$(PY_PEERS) -m pip uninstall --quiet --yes torchvision
	touch $@

peers-install: $(PEERS_STAMP)

# ---- the GPU environment ----------------------------------------------------------------------
# A separate environment with the gpu extra, pinned by constraints/gpu.txt to one CUDA major (13):
# torch 2.13.0 from PyPI (a CUDA 13.0 build), TensorRT 11 (its libraries from NVIDIA's index, hence
# --extra-index-url), onnxruntime-gpu. Never the CPU venv: onnxruntime and onnxruntime-gpu ship the
# same module and break each other.
VENV_GPU := .venv-gpu
PY_GPU := $(VENV_GPU)/bin/python
GPU_STAMP := $(VENV_GPU)/.installed-gpu
NVIDIA_INDEX ?= https://pypi.nvidia.com

# CUDA 13 needs NVIDIA driver 580+: one line and stop when it is older (standard library only, so
# it runs before anything is installed). Says nothing on a machine without an NVIDIA driver.
driver-check:
	@$(PYTHON) -m engines.core.driver

$(GPU_STAMP): pyproject.toml constraints/gpu.txt | driver-check
	$(PYTHON) -m venv $(VENV_GPU)
	$(PY_GPU) -m pip install --quiet --upgrade pip
	$(PY_GPU) -m pip install --quiet -c constraints/gpu.txt --extra-index-url $(NVIDIA_INDEX) -e '.[gpu,test,bench]'
	touch $@

gpu-install: driver-check $(GPU_STAMP)

# ---- serve, test, engines ---------------------------------------------------------------------

# Chromium for tests/test_page.py, from the system's packages (root, as in CI), when it is missing.
browser:
ifeq ($(CHROMIUM),)
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium
endif

# redis-server for tests/test_redis_cache.py and the benchmarks' Redis tier, from the system's packages (root, as in CI), when it is missing.
redis:
ifeq ($(REDIS_SERVER),)
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server
endif

# nginx for the load-balancer tests, from the system's packages (root, as in CI), when it is missing.
# The tests run their own nginx from a temporary directory on a free port, never the system's configuration.
nginx:
ifeq ($(NGINX),)
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nginx
endif

ifeq ($(GPU),1)
# TensorRT engines for this GPU, built once (minutes; build_engines.py logs its progress, and does
# nothing when the manifest in ENGINE_DIR already matches this GPU, TensorRT and model).
# ENGINE=torch (or onnxruntime) serves without them.
serve: gpu-install
ifneq ($(filter auto tensorrt,$(ENGINE)),)
	$(PY_GPU) build_engines.py --model $(MODEL) --out $(ENGINE_DIR)
endif
	SDXL_MODEL=$(MODEL) SDXL_ENGINE=$(ENGINE) SDXL_ENGINE_DIR=$(ENGINE_DIR) SDXL_HOST=$(HOST) SDXL_PORT=$(PORT) $(PY_GPU) -m service

# The CPU suite, then the gpu tier in the GPU environment.
test: install peers-install gpu-install browser redis nginx
	$(PY) -m pytest $(PYTEST_ARGS)
	$(PY_GPU) -m pytest -m gpu $(PYTEST_ARGS)

engines: gpu-install
	$(PY_GPU) build_engines.py --model $(MODEL) --out $(ENGINE_DIR)
else
serve: install
	SDXL_MODEL=$(MODEL) SDXL_ENGINE=$(ENGINE) SDXL_HOST=$(HOST) SDXL_PORT=$(PORT) $(PY) -m service

test: install peers-install browser redis nginx
	$(PY) -m pytest $(PYTEST_ARGS)

engines: install
	$(PY) build_engines.py --model $(MODEL) --out $(ENGINE_DIR)
endif

ifeq ($(GPU),1)
# The GPU plan: TensorRT plans for sdxl-random (built once), then one run that times the service on
# TensorRT over HTTP and in process, PyTorch fp16 components and the diffusers fp16 baseline.
BENCH_ENGINES ?= build/engines-gpu
bench: gpu-install redis
	$(PY_GPU) build_engines.py --model sdxl-random --out $(BENCH_ENGINES)
	$(PY_GPU) -m benchmarks --model sdxl-random --engine-dir $(BENCH_ENGINES)
else
# The CPU path as users get it: OpenVINO IR for sdxl-random and its int8 build (built once; a second
# run does nothing), the whole suite against the diffusers baseline and the peers (their export of
# sdxl-random is kept in build/peers), the int8 build served beside the float one, then the tiny VAE
# over HTTP.
BENCH_ENGINES ?= build/engines-cpu
bench: install peers-install redis
	$(PY) build_engines.py --model sdxl-random --out $(BENCH_ENGINES) --target cpu --precision int8
	$(PY) -m benchmarks --model sdxl-random --engine-dir $(BENCH_ENGINES)
	$(PY) -m benchmarks --model sdxl-random --engine-dir $(BENCH_ENGINES) --vae tiny --sections http,cache_hits --out benchmarks/results/vae-tiny
endif

bench-quick: install peers-install redis
	$(PY) -m benchmarks --quick

# ---- GPU checks -------------------------------------------------------------------------------

# The first GPU machine's one command (no network needed): scripts/gpu_check.py makes .venv-gpu
# from the wheels in .whl/ when it is missing, runs the torch-on-CUDA tier, builds the tiny and the
# sdxl-random TensorRT plans, runs the TensorRT tier and the GPU benchmark plan within a deadline,
# and writes build/gpu-check/report.md, the one file to send back. `make gpu-check GPU_CHECK_ARGS=--dry-run`
# lists the steps and checks what they need (the CPU suite runs it).
GPU_CHECK_ARGS ?=
gpu-check: driver-check
	$(PYTHON) scripts/gpu_check.py $(GPU_CHECK_ARGS)

# PyTorch on CUDA alone, for a bare GPU machine without network that already has Python 3.12 and
# a CUDA build of torch: the project's other dependencies come from the wheels in .whl/ (made by
# `make gpu-wheels` on a machine with network), installed with --no-deps into a directory of their
# own, never torch. Copy the repository with its .whl/ there, then `make gpu-check-torch`.
WHEELS := .whl
GPU_TORCH_SITE := build/gpu-torch-site

$(WHEELS)/requirements.txt:
	@echo "no $@: run 'make gpu-wheels' on a machine with network, then copy $(WHEELS)/ here" >&2; exit 1

$(GPU_TORCH_SITE)/.installed: $(WHEELS)/requirements.txt
	$(PYTHON) -m pip install --quiet --no-index --find-links $(WHEELS) --no-deps --target $(GPU_TORCH_SITE) -r $(WHEELS)/requirements.txt
	touch $@

gpu-check-torch: driver-check $(GPU_TORCH_SITE)/.installed
	PYTHONPATH=$(CURDIR):$(CURDIR)/$(GPU_TORCH_SITE) $(PYTHON) -m pytest -m gpu -v -p no:cacheprovider tests/test_torch_cuda.py

# On a machine with network: the wheels gpu-check-torch needs, for CPython 3.12 on manylinux x86_64.
# pip resolves the project's dependencies and its test extra against constraints/gpu.txt without
# downloading anything (--dry-run --report), then downloads what it chose except torch and its CUDA
# libraries (torch, triton, nvidia-*, cuda-*), which the GPU machine has.
# pip takes --platform literally (no older glibc implied): each manylinux tag up to 2_28 is named.
WHEEL_PLATFORM := --only-binary=:all: --python-version 3.12 \
    $(foreach glibc,$(shell seq 28 -1 5),--platform manylinux_2_$(glibc)_x86_64) \
    $(foreach legacy,manylinux2014 manylinux2010 manylinux1,--platform $(legacy)_x86_64)
gpu-wheels:
	mkdir -p $(WHEELS)
	$(PYTHON) docker/requirements.py pyproject.toml test > $(WHEELS)/wanted.txt
	$(PYTHON) -m pip install --quiet --dry-run --ignore-installed $(WHEEL_PLATFORM) --target $(WHEELS)/.dry-run \
	    -c constraints/gpu.txt -r $(WHEELS)/wanted.txt --report $(WHEELS)/resolution.json
	$(PYTHON) -c 'import json, sys; chosen = [(i["metadata"]["name"].lower().replace("_", "-"), i["metadata"]["version"]) for i in json.load(open(sys.argv[1]))["install"]]; print("\n".join(f"{n}=={v}" for n, v in chosen if n not in ("torch", "triton") and not n.startswith(("nvidia-", "cuda-"))))' \
	    $(WHEELS)/resolution.json > $(WHEELS)/requirements.txt
	$(PYTHON) -m pip download --quiet --no-deps $(WHEEL_PLATFORM) -d $(WHEELS) -r $(WHEELS)/requirements.txt
	@echo "$(WHEELS)/: $$(ls $(WHEELS)/*.whl | wc -l) wheels, $$(du -sh $(WHEELS) | cut -f1)"

clean:
	rm -rf $(VENV) $(VENV_GPU) $(VENV_PEERS) build .pytest_cache
