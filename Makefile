# One-command entry points. Needs only Python 3.11 and make; everything else is installed into .venv.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
RUNS   ?= runs
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup run run-real test test-fast bench gpu-kit gpu-rehearse clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e ".[test]"
	touch $@

setup: $(VENV)/.installed ## create .venv and install opdlm with its test tools

run: setup ## the default end-to-end job on the built-in tiny model (Prefect flow, MLflow registry)
	OPDLM_RUNS_DIR=$(abspath $(RUNS)) $(BIN)/opdlm pipeline --recipe configs/tiny.yaml

run-real: setup ## the same pipeline on a real pretrained teacher: SmolLM2-135M-Instruct from PyPI, real GSM8K rows
	OPDLM_RUNS_DIR=$(abspath $(RUNS)) $(BIN)/opdlm pipeline --recipe configs/smollm2-135m.yaml

test: setup ## the whole test suite (what CI runs)
	$(BIN)/python -m pytest -q

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

bench: setup ## every benchmark script; each prints its headline last
	for f in benchmarks/*.py; do echo "== $$f"; \
	  case $$f in *serve_parity.py) echo "skipped: needs a CUDA GPU, sglang or lmdeploy, and --model (run it by hand)"; continue;; \
	    *gpu_check.py) echo "skipped: needs a CUDA GPU (make gpu-kit prints the command; --smoke runs it on toy shapes)"; continue;; \
	    *serve_example.py) [ -f $(RUNS)/mlruns.db ] || { echo "skipped: needs a registered model (make run)"; continue; };; esac; \
	  $(BIN)/python $$f || exit 1; done

GPU_PYTHON     ?= python3.12
GPU_IMAGE_VENV ?= $(HOME)/.cache/opdlm/gpu-image-venv-3.12

gpu-kit: setup ## wheels the offline GPU image lacks into .whl/ (needs PyPI); prints the one command to run there
	$(BIN)/python infra/gpu/kit.py build

gpu-rehearse: gpu-kit ## that kit, installed offline into a venv of the GPU image's versions, runs gpu_check --smoke
	$(BIN)/python infra/gpu/kit.py image-venv $(GPU_IMAGE_VENV) --python $(GPU_PYTHON)
	$(BIN)/python infra/gpu/kit.py rehearse --python $(GPU_IMAGE_VENV)/bin/python

clean:
	rm -rf $(RUNS) .pytest_cache
