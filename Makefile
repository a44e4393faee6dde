# Two commands do all set-up on a fresh machine: `make serve` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed-cpu
MODEL ?= stabilityai/sdxl-turbo
ENGINE ?= auto
HOST ?= 127.0.0.1
PORT ?= 5000
PYTEST_ARGS ?=

.PHONY: install serve test bench bench-quick engines gpu-check clean

install: $(STAMP)

# CPU install: torch pinned to the CPU build (constraints/cpu.txt) so no CUDA wheel is ever pulled in.
$(STAMP): pyproject.toml constraints/cpu.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -c constraints/cpu.txt torch==2.13.0
	$(PIP) install --quiet -c constraints/cpu.txt -e '.[onnx,openvino,test,bench]'
	touch $@

serve: install
	SDXL_MODEL=$(MODEL) SDXL_ENGINE=$(ENGINE) SDXL_HOST=$(HOST) SDXL_PORT=$(PORT) $(PY) -m service

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

# The CPU path as users get it: OpenVINO IR for sdxl-random (built once, ~7 min, 21 GB peak; a
# second run does nothing), the whole suite against the diffusers baseline, then the tiny VAE over HTTP.
BENCH_ENGINES ?= build/engines-cpu
bench: install
	$(PY) build_engines.py --model sdxl-random --out $(BENCH_ENGINES) --target cpu
	$(PY) -m benchmarks --model sdxl-random --engine-dir $(BENCH_ENGINES)
	$(PY) -m benchmarks --model sdxl-random --engine-dir $(BENCH_ENGINES) --vae tiny --sections http,cache_hits --out benchmarks/results/vae-tiny

bench-quick: install
	$(PY) -m benchmarks --quick

engines: install
	$(PY) build_engines.py --model $(MODEL) --out build/engines

# On a GPU machine: a separate environment with the gpu extra (torch with CUDA, onnxruntime-gpu,
# TensorRT from NVIDIA's index). Never the CPU venv: onnxruntime and onnxruntime-gpu ship the same
# module and break each other. The gpu tests build TensorRT plans for the tiny model, compare them
# with torch, start the service on them and make an image.
VENV_GPU := .venv-gpu
GPU_STAMP := $(VENV_GPU)/.installed-gpu
NVIDIA_INDEX ?= https://pypi.nvidia.com

$(GPU_STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV_GPU)
	$(VENV_GPU)/bin/python -m pip install --quiet --upgrade pip
	$(VENV_GPU)/bin/python -m pip install --quiet --extra-index-url $(NVIDIA_INDEX) -e '.[gpu,test]'
	touch $@

# The first line fails here, not in a row of skipped tests, when the machine cannot run TensorRT.
gpu-check: $(GPU_STAMP)
	$(VENV_GPU)/bin/python -c "import sys, torch, tensorrt; ok = torch.cuda.is_available(); print('torch', torch.__version__, 'TensorRT', tensorrt.__version__, 'GPU', torch.cuda.get_device_name(0) if ok else None); sys.exit(0 if ok else 'no CUDA GPU visible')"
	$(VENV_GPU)/bin/python -m pytest -m gpu -v -s -p no:cacheprovider tests/test_tensorrt_gpu.py

clean:
	rm -rf $(VENV) $(VENV_GPU) build .pytest_cache
