"""Sphinx configuration: ``make docs`` builds the HTML and runs the pages' doctests.

Build by hand (warnings are errors, as in CI)::

    python -m sphinx -W --keep-going -b html docs docs/_build/html
    python -m sphinx -W --keep-going -b doctest docs docs/_build/doctest
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "_ext"))

import dedupgraph  # noqa: E402

project = "dedupgraph"
author = "the dedupgraph developers"
copyright = "the dedupgraph developers"
version = release = dedupgraph.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.doctest",
    "settings_reference",  # _ext/settings_reference.py: the settings page, from the YAML and Settings
]

root_doc = "index"
source_suffix = {".rst": "restructuredtext"}
exclude_patterns = ["_build"]
templates_path = ["_templates"]
pygments_style = "default"

# -- HTML: the theme of dask's documentation (see _templates/layout.html) ----
html_theme = "dask_sphinx_theme"
html_title = f"dedupgraph {release}"
html_static_path = ["_static"]
html_show_sourcelink = False

# -- autodoc: the public API, as ``dedupgraph.<name>`` ------------------------
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_default_options = {"members": False}

# -- doctest: only the ``.. doctest::`` and ``.. testcode::`` blocks of the pages.
# The docstrings' own examples run with the test suite (pytest --doctest-modules),
# in their modules' namespaces; here they would lack those names.
doctest_test_doctest_blocks = ""
# Each page's examples start from, and leave behind, the configuration of this process.
# Nothing else here: every import an example needs is in the example, where a
# reader sees it (tests/test_doc_snippets.py runs the pages without this setup).
doctest_global_setup = """
import dask.config as _config
import distributed  # registers its config defaults before the snapshot below, as tests/conftest.py does

def _nested_copy(value):  # the dicts, not the leaves: optimizer objects keep their identity
    return {k: _nested_copy(v) for k, v in value.items()} if isinstance(value, dict) else value

_saved_config = _nested_copy(_config.config)
"""
doctest_global_cleanup = """
_config.config.clear()
_config.config.update(_saved_config)
"""
