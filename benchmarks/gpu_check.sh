#!/usr/bin/env bash
# The GPU check: the GPU path on one NVIDIA GPU in at most 8 minutes, as one table
# (benchmarks/gpu_check.py says which runs). For a lent GPU machine as they come here: no
# network, torch and transformers installed, the rest carried as wheels in .whl/, which
# benchmarks/gpu_wheels.sh makes beforehand on a machine with the registries:
#   bash benchmarks/gpu_wheels.sh                 # here, once
#   bash benchmarks/gpu_check.sh                  # there, from the repository root (.whl carried)
# `--rehearse-on-cpu` runs the same sequence on a CPU with a tiny model, to check the script
# (PYTHON=.venv/bin/python: the project's own environment, no wheels installed).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
rehearsal=$([[ " $* " == *" --rehearse-on-cpu "* ]] && echo yes || true)
if [[ -z $rehearsal ]] && ! nvidia-smi -L >/dev/null 2>&1; then
  echo "benchmarks/gpu_check.sh needs an NVIDIA GPU (nvidia-smi finds none here)" >&2
  exit 1
fi
if [[ -d .whl && -z $rehearsal ]]; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/gpu-check-site .whl/*.whl
  export PYTHONPATH=/tmp/gpu-check-site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false WANDB_MODE=disabled
exec timeout 480 "$PYTHON" benchmarks/gpu_check.py "$@"
