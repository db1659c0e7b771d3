# Two entry points that work on a fresh machine: `make serve` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-test
DEMO ?= demo-data
# where the demo's models read customers: parquet (in memory) or redis (127.0.0.1:6379)
STORE ?= parquet
HOST ?= 127.0.0.1
PORT ?= 8000
export NUMBA_CACHE_DIR ?= $(CURDIR)/.cache/numba

.PHONY: setup test serve demo bench bench-peers bench-quick clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

$(DEMO)/.built: $(STAMP)
	$(VENV)/bin/scoreline demo --root $(DEMO) --store $(STORE)
	touch $@

demo: $(DEMO)/.built

serve: $(DEMO)/.built
	$(VENV)/bin/scoreline serve --registry $(DEMO)/registry --host $(HOST) --port $(PORT)

# The peers (lleaves, MLServer in their own venvs; Treelite, ONNX Runtime, wrk): idempotent.
bench-peers: $(STAMP)
	$(PY) -m pip install -q -e '.[bench]'
	benchmarks/peers/setup.sh

bench: bench-peers
	$(VENV)/bin/scoreline bench

bench-quick: bench-peers
	$(VENV)/bin/scoreline bench --quick

clean:
	rm -rf $(VENV) .cache $(DEMO) .pytest_cache .benchmarks
