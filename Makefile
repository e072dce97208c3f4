# The two commands of the README:
#   make demo   - set up .venv and run the main job (a quick REST benchmark on embedded data)
#   make test   - set up .venv and run the test suite (it also builds the docs)
# and the documentation:
#   make docs   - build the site into docs/_build/html, running the examples (offline)
# PyTorch is pinned to the build that also has a working torchvision (needed by the WILDS
# extra); both wheels are resolved by pip from the local package index on our machines.
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1

SPHINXOPTS ?= -W --keep-going

.PHONY: install demo test lint docs docs-noplot

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PINS) -e ".[dev,bench,wilds,dask,docs,vision,text]"
	touch $@

# Optional for the tests: torch_scatter (no wheel on PyPI, built from source in a few minutes)
# lets the WILDS metric tests cross-check against wilds' own dataset.eval. Best effort: if the
# build fails those tests skip with the reason.
$(VENV)/.torch_scatter: $(VENV)/.installed
	$(PY) -m pip install -q --no-build-isolation torch-scatter==2.1.2 \
	  || echo "torch_scatter could not be built; the dataset.eval cross-checks will be skipped"
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(VENV)/bin/rest-fair bench --quick

test: $(VENV)/.installed $(VENV)/.torch_scatter
	$(PY) -m pytest -q

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check rest_fair tests examples benchmarks docs

docs: $(VENV)/.installed
	$(PY) -m sphinx $(SPHINXOPTS) -b html docs docs/_build/html
	@echo "Open docs/_build/html/index.html"

# The same pages without running the examples (their pages then show code only).
docs-noplot: $(VENV)/.installed
	$(PY) -m sphinx $(SPHINXOPTS) -D plot_gallery=0 -b html docs docs/_build/html
