# The two commands of README.md: `make demo` and `make test`. Both create or reuse .venv.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
FSNN := $(VENV)/bin/fsnn
STAMP := $(VENV)/.fsnn-installed

.PHONY: venv data test demo lint bench-accuracy bench-throughput clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch==2.13.0 is pinned in pyproject.toml; see README "PyTorch builds"
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

data: venv
	$(FSNN) data fetch mnist
	$(FSNN) data fetch fashion-mnist

lint: venv
	$(VENV)/bin/ruff check .

test: venv data lint
	$(PY) -m pytest -q

demo: venv data
	$(FSNN) pipeline configs/demo.yaml

bench-accuracy: venv data
	$(PY) benchmarks/accuracy.py

bench-throughput: venv
	$(PY) benchmarks/throughput.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
