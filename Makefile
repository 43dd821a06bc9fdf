VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
# The oldest dask and distributed that pyproject.toml admits: CI tests them too.
OLDEST_VENV ?= .venv-oldest
OLDEST_PINS := "dask[array,bag,dataframe]==2025.5.0" "distributed==2025.5.0"

.PHONY: demo test test-oldest docs

# The stamps are rebuilt only when the package metadata or the startup hook changes
# (pip copies dedupgraph_startup.pth into site-packages: an edit needs a reinstall).
$(VENV)/.installed: pyproject.toml dedupgraph_startup.pth
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e ".[test]"
	touch $@

# The docs extra (Sphinx, dask's theme) on top of the test one, in the same venv.
$(VENV)/.docs-installed: pyproject.toml dedupgraph_startup.pth
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e ".[test,docs]"
	touch $@

$(OLDEST_VENV)/.installed: pyproject.toml Makefile dedupgraph_startup.pth
	test -x $(OLDEST_VENV)/bin/python || $(PYTHON) -m venv $(OLDEST_VENV)
	$(OLDEST_VENV)/bin/python -m pip install --quiet -e ".[test]" $(OLDEST_PINS)
	touch $@

# The main job: the seed scenario before and after, on a local cluster.
demo: $(VENV)/.installed
	$(PY) -m dedupgraph.benchmarks.seed

test: $(VENV)/.installed
	$(PY) -m pytest

test-oldest: $(OLDEST_VENV)/.installed
	$(OLDEST_VENV)/bin/python -m pytest

# The documentation: HTML in docs/_build/html, then the examples in its pages run
# as doctests. Warnings are errors; --keep-going reports all of them at once.
SPHINX := $(PY) -m sphinx -W --keep-going -q -d docs/_build/doctrees
docs: $(VENV)/.docs-installed
	$(SPHINX) -b html docs docs/_build/html
	$(SPHINX) -b doctest docs docs/_build/doctest

# dask's own test suites without and with the pass (python -m dedupgraph.benchmarks.compat):
# fails if a dask test fails only with the pass and is not a known structural failure.
.PHONY: compat
compat: $(VENV)/.installed
	$(PY) -m dedupgraph.benchmarks.compat
