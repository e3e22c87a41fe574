# The two commands a newcomer runs: `make demo` and `make test`. Each installs what it needs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
CLI := $(VENV)/bin/stream-infer
STAMP := $(VENV)/.installed

.PHONY: install kafka-jars test demo bench clean help

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

install: $(STAMP)  ## create .venv and install the package with its test and bench extras (quick when done)

# Re-run only when the dependency list changes; `pip install -e` keeps the code itself live.
$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "stream-infer needs Python 3.11+; set PYTHON=python3.11")'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,bench]'
	@touch $@

kafka-jars: install  ## fetch the Apache Kafka jars with Maven (cached; no network once done)
	@$(CLI) kafka fetch >/dev/null

test: install kafka-jars  ## run the test suite against a real local Kafka
	$(PY) -m pytest $(PYTEST_ARGS)

demo: install kafka-jars  ## run the main job end to end on a local Kafka
	$(CLI) demo

bench: install kafka-jars  ## benchmark service vs per_event vs ceiling; writes bench-results/bench.{json,png}
	$(CLI) bench --out bench-results $(BENCH_ARGS)

clean:  ## remove the virtualenv and caches (not the Kafka jar cache)
	rm -rf $(VENV) .pytest_cache build *.egg-info
