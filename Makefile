# litflow: `make demo` and `make test` install everything first (into .venv) and are safe to re-run.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export NO_ALBUMENTATIONS_UPDATE := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := 1

.PHONY: install demo test test-fast bench stop clean

install: $(STAMP)

$(STAMP): pyproject.toml infra/install.sh
	bash infra/install.sh
	touch $(STAMP)

demo: install
	$(PY) -m infra.prefect.local demo

test: install
	$(PY) -m pytest -q -rs tests

# unit tests only: no servers, no clusters
test-fast: install
	$(PY) -m pytest -q -m "not slow" tests

bench: install
	$(PY) bench/bench_ingest.py

stop:
	@if [ -x $(PY) ]; then $(PY) -m infra.prefect.local stop; fi
	@if [ -f .run/spark/cluster.json ]; then $(PY) -m infra.spark.cluster stop --state .run/spark; fi

clean: stop
	rm -rf work .run .prefect
