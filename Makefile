# interloom: the two commands of the quick start are `make demo` and `make test`.
# Each creates .venv (Python 3.11) and installs what it needs.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip

.PHONY: demo test test-fast lint bench gpu-check browser clean help

help:
	@echo "make demo   build the embedded sample corpus, train the debug-cpu model on it, write the report"
	@echo "make test   lint, then the whole test suite (installs test extras and headless Chromium)"
	@echo "make lint   ruff check, ruff format --check, mypy against its baseline, import-layer contracts"
	@echo "make bench  run the benchmarks of bench/ (results go to docs/benchmarks.md by hand)"
	@echo "make gpu-check  the trainer on one GPU in < 8 min (bench/gpu.py): JSON in artifacts/gpu-check.json"

$(VENV)/.core: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e .
	touch $@

$(VENV)/.test: pyproject.toml $(VENV)/.core
	$(PIP) install -q -e '.[test]'
	touch $@

# headless Chromium for the report tests (Debian packages; needs root, as on CI)
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; }

demo: $(VENV)/.core
	$(VENV)/bin/interloom demo --output demo-out

# style, format, types (no more errors than tests/lint/mypy-baseline.json allows) and the layers of
# docs/design.md (import-linter contracts in pyproject.toml)
lint: $(VENV)/.test
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) tests/lint/mypy_baseline.py
	$(VENV)/bin/lint-imports

test: lint browser
	$(PY) -m pytest -q -ra --durations=15

test-fast: $(VENV)/.test
	$(PY) -m pytest -q -ra -m "not slow and not browser"

bench: $(VENV)/.test
	$(PY) -m bench.extraction
	$(PY) -m bench.minhash
	$(PY) -m bench.moe
	$(PY) -m bench.loader
	$(PY) -m bench.crawl

# the trainer on one CUDA GPU (recipe throughput/MFU/memory, MoE and attention kernels, 2-process FSDP2);
# `$(PY) -m bench.gpu --dry-run` runs the same sequence on tiny shapes on CPU
gpu-check: $(VENV)/.core
	$(PY) -m bench.gpu --out artifacts/gpu-check.json

clean:
	rm -rf demo-out artifacts .pytest_cache
