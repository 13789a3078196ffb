# The two commands of README.md: `make demo` and `make test`. Both create or reuse .venv.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
FSNN := $(VENV)/bin/fsnn
STAMP := $(VENV)/.fsnn-installed

.PHONY: venv data test demo lint typecheck pkgtree docs figures bench-accuracy bench-throughput gpu-bundle clean

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

lint: venv typecheck
	$(VENV)/bin/ruff check .

# fsnn as one folder tree of links (api/ -> fsnn/, platform/ -> fsnn/platform/, ...), for tools
# that cannot follow the editable install's folder mapping (mypy, mkdocstrings)
PKGTREE := build/pkgtree
# (platform/ as a tree of links with an __init__.py of its own: griffe skips a folder without
# one inside a package; the repository's platform/ has none, see DESIGN.md)
pkgtree:
	rm -rf $(PKGTREE) && mkdir -p $(PKGTREE)
	cp -rs $(CURDIR)/api $(PKGTREE)/fsnn
	for d in backends pipelines; do ln -s $(CURDIR)/$$d $(PKGTREE)/fsnn/$$d; done
	cp -rs $(CURDIR)/platform $(PKGTREE)/fsnn/platform
	touch $(PKGTREE)/fsnn/platform/__init__.py

# the public API and the CLI over it, strictly typed (settings: [tool.mypy] in pyproject.toml)
typecheck: venv pkgtree
	cd $(PKGTREE) && $(CURDIR)/$(PY) -m mypy --config-file $(CURDIR)/pyproject.toml \
	  --cache-dir $(CURDIR)/.mypy_cache -m fsnn -m fsnn.jobs -m fsnn.backends \
	  -m fsnn.pipelines.cli -m fsnn.pipelines.commands

test: venv data lint
	$(PY) -m pytest -q

demo: venv data
	$(FSNN) pipeline configs/demo.yaml

# The documentation site (mkdocs-material, strict): the CLI and config references are generated
# from the parser and the config models into docs/reference/ (git-ignored), the Python API
# reference (docs/reference/api.md) is read by mkdocstrings from the link tree build/pkgtree,
# then everything is built into site/. griffe, mkdocstrings' reader, skips a folder without
# __init__.py inside a package, so fsnn/platform becomes a tree of links there with an empty
# __init__.py of its own (only in build/: platform/ has none on purpose, see pyproject.toml).
# NO_MKDOCS_2_WARNING silences Material's end-of-life banner (not a build warning).
docs: venv pkgtree
	$(PY) docs/gen/cli_reference.py
	$(PY) docs/gen/config_reference.py
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site

# the documentation's pictures (docs/img/, committed): the flow, a torch-vs-NEST raster, rates
# converging to the equilibrium, accuracy over T and V_th from a real Tune search (~5 min)
figures: venv data
	$(PY) docs/gen/figures.py

bench-accuracy: venv data
	$(PY) benchmarks/accuracy.py

bench-throughput: venv
	$(PY) benchmarks/throughput.py

# What benchmarks/gpu_session.sh needs on a GPU machine without network: pydantic's wheels for
# its Python (3.12) and MNIST, into .gpu/ (ignored by git).
GPU_PY ?= 3.12
gpu-bundle: data
	mkdir -p .gpu/whl .gpu/data/mnist
	$(PY) -m pip download -q --no-deps --only-binary=:all: --python-version $(GPU_PY) \
	  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
	  --platform manylinux2014_x86_64 -d .gpu/whl $$($(PY) -m pip freeze | grep -iE \
	  '^(pydantic|pydantic.core|annotated.types|typing.inspection|typing.extensions)==')
	root=$${FSNN_DATA:-$$HOME/.cache/fsnn/data}/mnist; for f in $$root/*-ubyte; do \
	  gzip -c $$f > .gpu/data/mnist/$$(basename $$f).gz; done; cp $$root/.verified .gpu/data/mnist/

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
