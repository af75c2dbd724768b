# sipsockets: two commands matter, `make demo` and `make test`. Everything else is a step of those.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CORE_STAMP := $(VENV)/.sip-core-compiled
SIP_CORE := $(filter-out %/__init__.py,$(wildcard proxy/sipproxy/sip/*.py)) proxy/sipproxy/sip/_scan.c \
	proxy/sipproxy/worker/pool_active.py
PYTEST := $(PY) -m pytest -p no:cacheprovider

.PHONY: venv lint binaries prerequisites test test-unit test-fuzz fuzz test-integration test-e2e test-e2e-kind demo demo-down bench clean

$(STAMP): pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[proxy,operator,dev]'
	touch $@

# The SIP core runs compiled (mypyc, see setup.py). The extension modules sit beside their sources in this
# editable checkout, so they are rebuilt whenever a source changes: a stale one would shadow the edit.
$(CORE_STAMP): $(STAMP) $(SIP_CORE)
	$(PY) setup.py -q build_ext --inplace --force
	touch $@

venv: $(CORE_STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

# etcd, kube-apiserver, kubectl and helm, built once with Go into ~/.cache/sipsockets (or KUBEBUILDER_ASSETS).
binaries: $(STAMP)
	$(PY) -m devenv.binaries ensure

# The Debian packages the tiers use (devenv/prerequisites.py holds the list): installed when missing if this runs
# as root with apt; otherwise it stops here, before any tier, printing the one command that installs them.
prerequisites:
	$(PYTHON) -m devenv.prerequisites

test: prerequisites lint test-unit test-fuzz test-integration test-e2e

test-unit: $(CORE_STAMP)
	$(PYTEST) tests/unit

# Fuzzing (fuzz/, docs/reliability.md): a short bounded run of each harness in `make test`, the long one here.
test-fuzz: $(CORE_STAMP)
	$(PYTEST) tests/fuzz

fuzz: $(CORE_STAMP)
	$(PY) -m fuzz.run sip --runs 10000000 --explore 1200

test-integration: $(CORE_STAMP)
	$(PYTEST) tests/integration

test-e2e: $(CORE_STAMP) binaries
	$(PYTEST) tests/e2e

# Machines with Docker and kind only (not CI): the provider-independent e2e tests against a kind cluster.
test-e2e-kind: $(CORE_STAMP)
	SIPSOCKETS_E2E_PROVIDER=kind $(PYTEST) tests/e2e/test_harness.py tests/e2e/test_chart_dryrun.py \
		-k "not teardown_leaves_no_process"

demo: $(CORE_STAMP) binaries
	$(PY) -m devenv.demo up

demo-down: $(STAMP)
	$(PY) -m devenv.demo down

bench: $(CORE_STAMP)
	$(PY) -m bench

clean:
	rm -rf $(VENV) .dev build *.egg-info .mypy_cache .ruff_cache
	find proxy -name "*.so" -delete; rm -f *__mypyc*.so
