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

bench: install
	$(PY) -m benchmarks --model sdxl-random

bench-quick: install
	$(PY) -m benchmarks --quick

engines: install
	$(PY) build_engines.py --model $(MODEL) --out build/engines

clean:
	rm -rf $(VENV) build .pytest_cache
