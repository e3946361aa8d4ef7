# trainyard: `make demo` trains the mnist template end to end; `make test` runs the test suite.
SHELL := /bin/bash
PYTHON ?= python3
VENV := $(CURDIR)/.venv
PY := $(VENV)/bin/python
export TRAINYARD_HOME := $(CURDIR)
export AIRFLOW_HOME ?= $(CURDIR)/.airflow
export AIRFLOW_CONFIG ?= $(CURDIR)/airflow.cfg
export PATH := $(VENV)/bin:$(PATH)

.PHONY: setup demo test bench server cluster cluster-prepare clean

setup: $(VENV)/.installed $(AIRFLOW_HOME)/airflow.db

$(VENV)/.installed: requirements.txt constraints.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt -c constraints.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -e .
	bash scripts/install-system-deps.sh
	touch $@

$(AIRFLOW_HOME)/airflow.db: $(VENV)/.installed
	mkdir -p $(AIRFLOW_HOME)
	airflow db migrate > $(AIRFLOW_HOME)/db-migrate.log 2>&1 || (cat $(AIRFLOW_HOME)/db-migrate.log; exit 1)

demo: setup
	bash scripts/demo.sh

test: $(VENV)/.installed cluster-prepare
	bash scripts/test.sh

# The local single-node Kubernetes the kubernetes-runner tests use (tests/k8s): Debian's packages and Kubernetes
# built once per machine (cached), then started in the foreground until Ctrl-C; `source $(CLUSTER)/env.sh` in
# another shell points trainyard and Airflow at it.
CLUSTER ?= /tmp/trainyard-cluster
cluster-prepare: $(VENV)/.installed
	bash scripts/cluster/prepare.sh

cluster: cluster-prepare
	$(PY) -m trainyard.localk8s $(CLUSTER)

# A throw-away Airflow (api-server, scheduler, dag-processor, triggerer) on 127.0.0.1 for `trainyard init`.
server: $(VENV)/.installed
	$(PY) -m trainyard.local_airflow

bench: setup
	$(PY) bench/upload
	$(PY) bench/pipeline
	$(PY) bench/cache
	$(PY) bench/sweep
	$(PY) bench/sweep --local
	$(PY) bench/datums
	$(PY) bench/ingest
	$(PY) bench/server
	$(PY) bench/k8s
	$(PY) bench/scale
	$(PY) bench/peers

clean:
	rm -rf $(AIRFLOW_HOME) .pytest_cache
