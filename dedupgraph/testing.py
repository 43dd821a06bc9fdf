"""The pytest plugin, by the name the docs give it: ``pytest -p dedupgraph.testing``.

It lives in :mod:`dedupgraph.tools.testing`; pytest reads its hooks and its
fixture from this module's names.
"""

from dedupgraph.tools.testing import (
    dedupgraph_pass_on,
    pytest_addoption,
    pytest_configure,
    pytest_report_header,
    pytest_terminal_summary,
    pytest_unconfigure,
)

__all__ = [
    "dedupgraph_pass_on",
    "pytest_addoption",
    "pytest_configure",
    "pytest_report_header",
    "pytest_terminal_summary",
    "pytest_unconfigure",
]
