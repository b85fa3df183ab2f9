# aar_ray: `make demo` runs the main job, `make test` the test suite. Both set up what they need.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export MLFLOW_DISABLE_TELEMETRY := true
export PYTHONUNBUFFERED := 1

.PHONY: setup test test-fast demo w2s bench ui clean
.DEFAULT_GOAL := demo

setup: $(STAMP)

# torch first, pinned: the CPU wheel on local disk. A bare `torch` requirement would pull a CUDA build.
# (.ci/install-python.sh: with uv when it works, else pip)
$(STAMP): pyproject.toml .ci/apt/*.txt .ci/install-python.sh
	@bash .ci/install-apt.sh
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	bash .ci/install-python.sh $(BIN)
	@touch $(STAMP)

test: setup
	$(BIN)/python -m pytest -q --durations=20

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

demo: setup
	$(BIN)/aar campaign experiments/quick.yaml

w2s: setup
	$(BIN)/aar w2s experiments/w2s_quick.yaml

bench: setup
	@set -e; for f in bench/*.py; do echo "== $$f"; $(BIN)/python $$f; done

ui: setup
	$(BIN)/aar ui

clean:
	rm -rf .aar_cache runs mlruns .pytest_cache

# Each area keeps its own targets in mk/<area>.mk.
-include $(wildcard mk/*.mk)
