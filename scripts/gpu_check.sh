#!/usr/bin/env bash
# GPU readiness check (issue 8): proves the paper-scale path on one GPU in ≤ 10 minutes.
#
#   scripts/gpu_check.sh                 # on the GPU machine (results under $OUT, else ./gpu_check_out)
#   scripts/gpu_check.sh --tiny          # every part at a tiny shape, on CPU, in well under a minute
#   scripts/gpu_check.sh --help          # all options (--budget-s, --parts, --part-limit, ...)
#   scripts/gpu_check.sh --build-wheels [DIR]   # (with network) wheels for the GPU machine's Python 3.12
#
# Interpreter: $PYTHON if set, else .venv/bin/python if present, else python3. tcopd is imported
# from this checkout (PYTHONPATH); missing packages are installed from wheels/ (see docs/gpu.md).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -n "${PYTHON:-}" ]]; then
  PY="$PYTHON"
elif [[ -x "$ROOT/.venv/bin/python" ]]; then
  PY="$ROOT/.venv/bin/python"
else
  PY=python3
fi

if [[ "${1:-}" == "--build-wheels" ]]; then
  # Everything the GPU machine may lack, as wheels for CPython 3.12 on x86-64 Linux. torch, Triton
  # and CUDA are on that machine already and are never downloaded (nor installed by the check).
  DEST="${2:-$ROOT/wheels}"
  mkdir -p "$DEST"
  TF_VERSION=$("$PY" -c "import importlib.metadata as m; print(m.version('transformers'))")
  PLAT=(--python-version 3.12 --implementation cp --only-binary=:all:
        --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux_2_34_x86_64)
  "$PY" -m pip download -q --dest "$DEST" "${PLAT[@]}" \
    "transformers==$TF_VERSION" safetensors pyyaml pytest \
    hjson ninja msgpack psutil py-cpuinfo "pydantic>=2" einops tqdm packaging
  # DeepSpeed is published as a source archive only: build its pure-Python wheel here (no ops).
  DS_BUILD_OPS=0 "$PY" -m pip wheel -q --no-deps --no-build-isolation --wheel-dir "$DEST" "deepspeed==0.19.8"
  echo "wheels in $DEST:"
  ls -1 "$DEST"
  du -sh "$DEST"
  exit 0
fi

export PYTHONPATH="$ROOT/scripts${PYTHONPATH:+:$PYTHONPATH}"
export DS_BUILD_OPS="${DS_BUILD_OPS:-0}"
cd "$ROOT"
exec "$PY" -m gpu_check "$@"
