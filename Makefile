# Two entry points that work on a fresh machine: `make serve` and `make test`. Both install exactly
# the versions in uv.lock (README "Locked environment"); `make lock` updates the lock.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
UV := $(VENV)/bin/uv
DEMO ?= demo-data
# where the demo's models read customers: parquet (in memory) or redis (127.0.0.1:6379)
STORE ?= parquet
HOST ?= 127.0.0.1
PORT ?= 8000
export NUMBA_CACHE_DIR ?= $(CURDIR)/.cache/numba
# uv syncs $(VENV), whatever venv the caller has activated
export UV_PROJECT_ENVIRONMENT := $(abspath $(VENV))
unexport VIRTUAL_ENV
# Byte-compiled at install: where PYTHONDONTWRITEBYTECODE is set (this machine and its CI) every new
# interpreter otherwise compiles numba, scipy and our own modules from source, 2.7 s of a 3.2 s
# fresh-process model load here (measured), paid again by each server and CLI the tests start.
export UV_COMPILE_BYTECODE := 1
SOURCES := scoreline engine kernels server registry
LOCKED := uv.lock pyproject.toml

.PHONY: setup test serve demo lock lock-upgrade bench bench-peers bench-quick clean

# uv, the one tool that installs the lock, comes from pip with hashes checked; uv-bootstrap.txt is
# uv.lock's dev group (uv and pip), exported by `make lock`, so uv sync then keeps both as they are.
$(UV): uv-bootstrap.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --require-hashes --no-deps -r uv-bootstrap.txt
	touch $@

# --locked: a uv.lock out of step with pyproject.toml is refused (run `make lock`), never re-resolved.
# The test set is synced exactly: whatever the lock does not list is removed.
$(VENV)/.installed-test: $(LOCKED) $(UV)
	$(UV) sync --locked --extra test
	touch $@

# The runtime set plus LightGBM (the demo trains with it); --inexact keeps the test extras of a venv
# that also runs `make test`.
$(VENV)/.installed-serve: $(LOCKED) $(UV)
	$(UV) sync --locked --inexact --extra demo
	touch $@

setup: $(VENV)/.installed-test

test: $(VENV)/.installed-test
	$(PY) -m compileall -q -j 0 $(SOURCES)
	$(PY) -m pytest $(PYTEST_ARGS)

$(DEMO)/.built: $(VENV)/.installed-serve
	$(VENV)/bin/scoreline demo --root $(DEMO) --store $(STORE)
	touch $@

demo: $(DEMO)/.built

serve: $(DEMO)/.built
	$(PY) -m compileall -q -j 0 $(SOURCES)
	$(VENV)/bin/scoreline serve --registry $(DEMO)/registry --host $(HOST) --port $(PORT)

# After editing dependencies in pyproject.toml: re-resolve, keeping every pin that still fits.
lock: $(UV)
	$(UV) lock
	$(UV) export --quiet --frozen --only-dev --no-emit-project --output-file uv-bootstrap.txt

# Every package to the newest version pyproject.toml allows (`$(UV) lock --upgrade-package NAME`
# moves one); then run `make test` before committing uv.lock and uv-bootstrap.txt.
lock-upgrade: $(UV)
	$(UV) lock --upgrade
	$(UV) export --quiet --frozen --only-dev --no-emit-project --output-file uv-bootstrap.txt

# The peers (lleaves, MLServer in their own venvs; Treelite, ONNX Runtime, wrk): idempotent.
bench-peers: $(VENV)/.installed-test
	$(UV) sync --locked --inexact --extra test --extra bench --extra bench-data
	benchmarks/peers/setup.sh

bench: bench-peers
	$(VENV)/bin/scoreline bench

bench-quick: bench-peers
	$(VENV)/bin/scoreline bench --quick

clean:
	rm -rf $(VENV) .cache $(DEMO) .pytest_cache .benchmarks
