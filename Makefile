# The two commands a newcomer runs: `make demo` and `make test`. Each installs what it needs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
CLI := $(VENV)/bin/stream-infer
STAMP := $(VENV)/.installed

.PHONY: install kafka-jars system-tools test unit lint demo bench faults fuzz clean help

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

install: $(STAMP)  ## create .venv and install the package with its test, lint and bench extras (quick when done)

# Re-run only when the dependency list changes; `pip install -e` keeps the code itself live.
$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "stream-infer needs Python 3.11+; set PYTHON=python3.11")'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,lint,bench]'
	@touch $@

kafka-jars: install  ## fetch the Apache Kafka jars with Maven (cached; no network once done)
	@$(CLI) kafka fetch >/dev/null

# Debian packages some tests use: prometheus (a real server scrapes a worker; promtool checks
# deploy/prometheus) and kcat. Installed when missing and apt-get can run as root; otherwise
# those tests skip, and say why.
SYSTEM_PACKAGES := prometheus kcat

system-tools:  ## install the Debian packages the tests use (prometheus, kcat), if missing and root
	@if command -v prometheus >/dev/null && command -v promtool >/dev/null && command -v kcat >/dev/null; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing Debian packages: $(SYSTEM_PACKAGES)"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y -qq --no-install-recommends $(SYSTEM_PACKAGES) >/dev/null 2>&1 || \
	  { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq --no-install-recommends $(SYSTEM_PACKAGES) >/dev/null; }; \
	else \
	  echo "note: prometheus/promtool/kcat not installed and apt-get needs root: the tests that use them are skipped"; \
	fi

test: install kafka-jars system-tools  ## run the whole test suite (tests/unit and tests/integration, the latter against a real local Kafka)
	$(PY) -m pytest $(PYTEST_ARGS)

unit: install  ## the tests that need no broker (tests/unit; about 30 s)
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

lint: install  ## ruff (lint and format) and mypy over the package and tests; zero findings expected
	$(VENV)/bin/ruff check stream_infer tests
	$(VENV)/bin/ruff format --check stream_infer tests
	$(VENV)/bin/mypy

demo: install kafka-jars  ## run the main job end to end on a local Kafka
	$(CLI) demo

bench: install kafka-jars  ## benchmark service vs per_event vs ceiling; writes bench-results/bench.{json,png}
	$(CLI) bench --out bench-results $(BENCH_ARGS)

# Ten trials of each of the four scenarios under both guarantees, 30 s of stream each: about 100
# minutes on 2 cores (the broker scenarios start a 3-node cluster per trial).
FAULTS_ARGS ?= --guarantee both --duration 30

faults: install kafka-jars  ## fault trials (worker kill, rolling restart, broker kill) against real workers; FAULTS_ARGS="--trials 1" etc.
	$(CLI) faults $(FAULTS_ARGS)

# 12,000 hostile records of every kind and as many valid events through one worker, a backlog
# of 2,000 compressed 1 MB poison values drained by a fresh one, then a million distinct engine
# ids fed twice (without and with state.max_keys): about 4 minutes on 2 cores. --header-names
# also writes events whose header names are not UTF-8 (with kcat, which system-tools installs).
FUZZ_ARGS ?= --hostile 12000 --poison-burst 2000 --keys 1000000 --header-names

fuzz: install kafka-jars system-tools  ## hostile-input fuzz run against a real worker (large); FUZZ_ARGS="--hostile 2000" etc.
	$(CLI) fuzz $(FUZZ_ARGS)

clean:  ## remove the virtualenv and caches (not the Kafka jar cache)
	rm -rf $(VENV) .pytest_cache build *.egg-info
