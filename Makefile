# Set-up is part of every target: a fresh machine needs only python3 (3.10+) and make.
VENV ?= .venv
PY := $(VENV)/bin/python
# With no NVIDIA GPU, install the CPU build of torch first (the project's range admits it).
CPU_TORCH ?= torch==2.13.0
# pip constraints for set-up: none for .venv; test-floors passes .ci/floors.txt
CONSTRAINTS ?=
PIP_INSTALL = -m pip install --quiet --disable-pip-version-check $(if $(CONSTRAINTS),-c $(CONSTRAINTS))
# pytest-xdist workers for the suite: more than the cores, since many tests wait on processes,
# servers and a browser rather than compute (`make test TEST_JOBS=1` runs it in one process)
TEST_JOBS ?= 4
# `make test` runs the suite but the slow end-to-end runs (many workers, kill -9, PgBouncer, Slurm,
# the dashboard in Chromium, the bench): minutes on 2 cores. `make test-slow` runs those; CI both.
TEST_MARKERS ?= not slow
# The floors run: tuner with the lowest versions pyproject.toml admits, in a venv of its own,
# over what can differ between versions: the fast paths under torch and Optuna and their
# fallbacks, tuner's SQL and storage on Optuna's tables (its conformance suite included), studies,
# samplers and heartbeats, training and packing against torch, the CLI (typer and click), and
# the dashboard (optuna-dashboard). It leaves out the slow end-to-end runs but the dashboard's, and
# the docs' examples (studies run end to end through the same CLI the CLI tests cover).
FLOORS_VENV ?= .venv-floors
FLOORS_MARKERS ?= not slow or dashboard
FLOORS_DESELECT ?= --deselect tests/test_cli.py::test_readme_examples_all_run
FLOORS_TESTS ?= tests/test_compat.py tests/test_storage_conformance.py tests/test_sql.py tests/test_storage.py \
	tests/test_heartbeat.py tests/test_study.py tests/test_samplers.py tests/test_train.py tests/test_steps.py \
	tests/test_packing.py tests/test_torch_datasets.py tests/test_cli.py tests/test_docs.py tests/test_bad_input.py tests/test_dashboard.py

.PHONY: setup demo test test-slow test-floors clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml $(CONSTRAINTS)
	python3 -m venv $(VENV)
	@if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then \
		echo "GPU found: torch comes from the project's requirement (a CUDA build)"; \
	else \
		$(PY) $(PIP_INSTALL) "$(CPU_TORCH)"; \
	fi
	$(PY) $(PIP_INSTALL) -e ".[test]"
	@# The dashboard tests drive the system Chromium through playwright (never `playwright install`).
	@if [ ! -x /usr/bin/chromium ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing chromium (apt-get) for the dashboard tests"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null \
			|| echo "warning: could not install chromium; the dashboard's browser tests will skip"; \
	fi
	touch $@

# The main job: a TPE study on sklearn's digits, stored in studies/tuner.db.
demo: setup
	$(VENV)/bin/tuner study run --spec studies/demo.yaml

test: setup
	$(PY) -m pytest -n $(TEST_JOBS) --dist loadgroup -m "$(TEST_MARKERS)" $(PYTEST_ARGS)

test-slow:
	@$(MAKE) --no-print-directory test TEST_MARKERS=slow

test-floors:
	@$(MAKE) --no-print-directory setup VENV=$(FLOORS_VENV) CONSTRAINTS=.ci/floors.txt
	$(FLOORS_VENV)/bin/python -m pytest -n $(TEST_JOBS) --dist loadgroup -m "$(FLOORS_MARKERS)" $(FLOORS_DESELECT) $(PYTEST_ARGS) $(FLOORS_TESTS)

clean:
	rm -rf $(VENV) $(FLOORS_VENV) studies/*.db studies/*.db-* studies/*.db.lock studies/artifacts studies/models studies/bench.json out
