# FaceGPT: `make demo` and `make test` set up .venv themselves (idempotent; quick when it exists).
VENV ?= .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup test test-fast demo bench clean-venv

setup:
	@bash scripts/setup_venv.sh

## Run the whole test suite and print its wall time.
test: setup
	@start=$$(date +%s); \
	$(PY) -m pytest -q $(PYTEST_ARGS); status=$$?; \
	echo "test suite wall time: $$(( $$(date +%s) - start )) s"; exit $$status

## The suite without the tests that load real SmolLM2 weights.
test-fast: setup
	@$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

## Synthetic faces -> train a small MiniGPT-v2-style model on SmolLM2 (CPU) -> accuracy -> chat.
demo: setup
	@$(PY) scripts/demo.py $(DEMO_ARGS)

bench: setup
	@$(PY) benchmarks/bench_image_processor.py

clean-venv:
	rm -rf $(VENV)
