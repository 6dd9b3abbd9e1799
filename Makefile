# One command per job; each sets up a fresh clone first when needed.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PATH := $(abspath $(BIN)):$(PATH)
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: setup run test test-fast lint bench bench-pipeline bench-grid ui ui-check server results grid

setup: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	@test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.lock
	@touch $@

run: setup  ## the default pipeline: fetch, prepare, train (then test) each variant, compare
	$(BIN)/dvc repro

results: setup  ## every published table: each protocol as a grid (grids/<protocol>/, on every core, or the cluster in RAY_ADDRESS; a rerun resumes), its per-run CSV under docs/results/, then the tables of docs/results.md and README.md (PROTOCOLS="digits-centered digits-unit" runs some; `python -m pipeline.results tables` only redraws the tables)
	$(BIN)/python -m pipeline.results run $(PROTOCOLS)

# one pytest-xdist worker per core; a test file stays on one worker (in the order collected: the
# longest e2e files first), so a module's costly fixture (the built project, the team server) is made once
PARALLEL := -n logical --dist loadfile --no-loadscope-reorder

test: setup  ## the whole test suite (no network): unit, stages and e2e, on every core
	$(BIN)/python -m pytest $(PARALLEL)

test-fast: setup  ## the unit tests alone, for a quick check while editing (under 2 minutes)
	$(BIN)/python -m pytest -m unit $(PARALLEL)

lint: setup
	$(BIN)/ruff check pipeline tests benchmarks
	$(BIN)/ruff format --check pipeline tests benchmarks

bench: setup  ## training speed: ours vs plain Keras model.fit; writes reports/benchmark.json
	$(BIN)/python -m benchmarks.bench_training

bench-pipeline: setup  ## pipeline overhead: a forced `dvc repro` against the training it runs; reports/pipeline_benchmark.json
	$(BIN)/python -m benchmarks.bench_pipeline

bench-grid: setup  ## the grid's figures: local grid vs the serial path, per-run cost, 2 nodes vs 1, make results extrapolated; reports/grid_benchmark.json (about 15 min)
	$(BIN)/python -m benchmarks.bench_grid

UI_LOG ?= $(VENV)/mlflow-ui.log
ui: setup  ## the MLflow UI on the project's embedded store; its log to $(UI_LOG), the link that opens the training runs printed last; Ctrl-C stops it
	@port=$${MLFLOW_PORT:-5000}; url=http://127.0.0.1:$$port; \
	echo "mlflow ui --backend-store-uri sqlite:///mlflow.db on $$url (its log: $(UI_LOG))"; \
	MLFLOW_TRACKING_URI= $(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port $$port \
		>$(UI_LOG) 2>&1 & pid=$$!; \
	trap 'echo "stopping the MLflow UI" >&2; kill -TERM $$pid 2>/dev/null; wait $$pid 2>/dev/null; exit 130' INT TERM HUP; \
	until $(BIN)/python -c "import urllib.request as u; u.urlopen('$$url/health', timeout=2)" 2>/dev/null; do \
		if ! kill -0 $$pid 2>/dev/null; then tail -n 20 $(UI_LOG) >&2; echo "error: the MLflow UI did not start" >&2; exit 1; fi; \
		sleep 0.5; \
	done; \
	if ! kill -0 $$pid 2>/dev/null; then tail -n 20 $(UI_LOG) >&2; echo "error: the MLflow UI did not start (is port $$port taken?)" >&2; exit 1; fi; \
	link=$$(MLFLOW_TRACKING_URI= $(BIN)/python -c "from pipeline.tracking import experiment_url; \
		print(experiment_url('$$url'))" 2>/dev/null || echo $$url); \
	echo "the MLflow UI is up; Ctrl-C stops it. Open:"; echo "  $$link"; \
	wait $$pid

ui-check: setup  ## the real-browser check of the MLflow UI and its screenshots (Debian chromium, chromium-driver): docs/ui.md
	$(BIN)/python scripts/ui_check.py --project . --out ui-check

server: setup  ## team tracking server: MLflow on PostgreSQL, proxied artifacts, 127.0.0.1:$${MLFLOW_PORT:-5000}; a login (MLFLOW_AUTH_ADMIN_PASSWORD) is required on any other MLFLOW_HOST, see docs/team.md
	scripts/mlflow-server.sh
