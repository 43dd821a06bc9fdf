VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python

.PHONY: demo test

# The stamp is rebuilt only when the package metadata changes.
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e ".[test]"
	touch $@

# The main job: the seed scenario before and after, on a local cluster.
demo: $(VENV)/.installed
	$(PY) -m benchmarks.seed

test: $(VENV)/.installed
	$(PY) -m pytest
