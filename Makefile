# svfseg developer entry points. `make help` lists them.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
# Everything ruff checks: the package, tests, benchmarks, tools and every script at the repository root.
LINT_PATHS := src tests benchmarks tools $(wildcard *.py)

.PHONY: help install test test-fast test-durations demo demo-synthetic study proxy lint format bench bench-pipeline bench-load learning-spread clean

help:  ## list targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install svfseg with dev extras (idempotent)

# Whole files per worker, the longest first (tests/durations.json; xdist's own order is by test count).
XDIST := -n 2 --dist loadfile --no-loadscope-reorder

test: $(STAMP)  ## run the test suite (what CI runs)
	$(PY) -m pytest $(XDIST)

test-fast: $(STAMP)  ## the suite without the slow end-to-end tests (the edit loop; CI runs make test)
	$(PY) -m pytest $(XDIST) -m "not slow"

test-durations: $(STAMP)  ## run the suite and write each test file's seconds to tests/durations.json (its order)
	$(PY) -m pytest $(XDIST) -q --junitxml=.pytest-durations.xml
	$(PY) -m tests.helpers.durations .pytest-durations.xml && rm -f .pytest-durations.xml

demo: $(STAMP)  ## real photos: CCP + ImageNet EfficientNet-Lite0 -> freeze/full/SVF x 3 seeds -> outputs/demo (CPU; CCP from SVFSEG_CCP_SRC or a download)
	$(PY) -m svfseg.demo

demo-synthetic: $(STAMP)  ## proxy weights + synthetic data -> freeze/full/SVF x 3 seeds -> outputs/demo-synthetic (CPU, no download)
	$(PY) -m svfseg.demo --synthetic

study: $(STAMP)  ## the real-photo study of docs/real-data.md: 4 folds x 5 seeds x 6 strategies -> outputs/study (CPU, hours; resumes)
	$(PY) -m svfseg.demo --study

proxy: $(STAMP)  ## build (or reuse) the proxy-pretrained ResNet-50 weights under initmodel/proxy (CPU, ~1 min)
	$(PY) -m svfseg.pretrain --out initmodel/proxy

lint: $(STAMP)  ## ruff
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(VENV)/bin/ruff format --check $(LINT_PATHS)

format: $(STAMP)  ## ruff fix + format
	$(VENV)/bin/ruff check --fix $(LINT_PATHS)
	$(VENV)/bin/ruff format $(LINT_PATHS)

bench: $(STAMP)  ## SVF step/eval/memory benchmark on ResNet-50 (CPU); figures go to docs/benchmarks.md
	$(PY) benchmarks/bench_svf.py

bench-load: $(STAMP)  ## loading an SVF checkpoint from shapes vs with SVDs (CPU, ~3 min)
	$(PY) benchmarks/bench_load.py --write docs/benchmarks.md

bench-pipeline: $(STAMP)  ## training steps 1/5-shot, checkpointing memory, eval, loader, class index (CPU, ~25 min)
	$(PY) benchmarks/bench_pipeline.py --write docs/benchmarks.md

learning-spread: $(STAMP)  ## the spread over seeds and thread counts behind tests/tasks/test_learning.py's margins (~10 min)
	$(PY) benchmarks/learning_spread.py

clean:  ## remove caches and outputs (keeps .venv)
	rm -rf outputs multirun .pytest_cache .ruff_cache
