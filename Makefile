# Ebbtide. `make demo` and `make test` each do all of their own set-up on a fresh machine.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-8)
CLUSTER_DIR ?= .run/cluster
NODES ?= 8

.PHONY: venv binaries redis test unit integration e2e lint manifests demo demo-down cluster-up cluster-down \
        bench kind-up e2e-kind clean

venv: $(STAMP)
$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

binaries:
	hack/build-control-plane.sh >/dev/null

redis:
	hack/ensure-redis.sh

test: venv binaries redis
	$(BIN)/python -m pytest -q -p no:cacheprovider

unit: venv
	$(BIN)/python -m pytest -q tests/unit

integration: venv binaries redis
	$(BIN)/python -m pytest -q tests/integration

lint: venv
	$(BIN)/ruff check .
	$(BIN)/mypy crds controllers autoscaler packer simulator operator

manifests: venv
	$(BIN)/python -m crds.generate

cluster-up: binaries
	$(PY) hack/cluster.py up --dir $(CLUSTER_DIR) --nodes $(NODES)

cluster-down:
	$(PY) hack/cluster.py down --dir $(CLUSTER_DIR)

demo: venv binaries
	hack/demo.sh

demo-down:
	hack/demo.sh down

e2e: venv binaries
	$(BIN)/python -m pytest -q tests/e2e

kind-up:
	hack/kind.sh up

e2e-kind:
	hack/kind.sh e2e

clean: cluster-down
	rm -rf .run
