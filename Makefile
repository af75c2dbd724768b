# sipsockets: two commands matter, `make demo` and `make test`. Everything else is a step of those.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST := $(PY) -m pytest -p no:cacheprovider

.PHONY: venv lint binaries test test-unit test-integration test-e2e test-e2e-kind demo demo-down bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

venv: $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

# etcd, kube-apiserver, kubectl and helm, built once with Go into ~/.cache/sipsockets (or KUBEBUILDER_ASSETS).
binaries: $(STAMP)
	$(PY) -m devenv.binaries ensure

test: lint test-unit test-integration test-e2e

test-unit: $(STAMP)
	$(PYTEST) tests/unit

test-integration: $(STAMP)
	$(PYTEST) tests/integration

test-e2e: $(STAMP) binaries
	$(PYTEST) tests/e2e

# Machines with Docker and kind only (not CI): the provider-independent e2e tests against a kind cluster.
test-e2e-kind: $(STAMP)
	SIPSOCKETS_E2E_PROVIDER=kind $(PYTEST) tests/e2e/test_harness.py tests/e2e/test_chart_dryrun.py \
		-k "not teardown_leaves_no_process"

demo: $(STAMP) binaries
	$(PY) -m devenv.demo up

demo-down: $(STAMP)
	$(PY) -m devenv.demo down

bench: $(STAMP)
	$(PY) -m bench

clean:
	rm -rf $(VENV) .dev build *.egg-info .mypy_cache .ruff_cache
