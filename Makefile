# Set-up is part of every target: a fresh machine needs only python3 (3.10+) and make.
VENV ?= .venv
PY := $(VENV)/bin/python
# With no NVIDIA GPU, install the CPU build of torch first (the project's range admits it).
CPU_TORCH ?= torch==2.13.0

.PHONY: setup demo test clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	@if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then \
		echo "GPU found: torch comes from the project's requirement (a CUDA build)"; \
	else \
		$(PY) -m pip install --quiet --disable-pip-version-check "$(CPU_TORCH)"; \
	fi
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[test]"
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
	$(PY) -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) studies/*.db studies/*.db-* studies/*.db.lock studies/artifacts studies/models studies/bench.json out
