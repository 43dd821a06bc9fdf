"""A segment directory of its own for a test: ``with segment_dir() as path: ...``.

Each test that makes segments keeps them in a fresh directory on /dev/shm
(``DEDUPGRAPH_SHM_DIR``), so that other test runs on the same machine cannot
make its assertions wrong, and "nothing left" can be asserted exactly.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from dedupgraph.placement import segments


@contextlib.contextmanager
def segment_dir() -> Iterator[Path]:
    """A fresh directory on /dev/shm, named by DEDUPGRAPH_SHM_DIR (workers started inside inherit it)."""
    path = Path(tempfile.mkdtemp(prefix="test-dedupgraph-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(segments.DIR_VARIABLE, str(path))
        try:
            yield path
        finally:
            for leftover in path.iterdir():
                leftover.unlink()
            path.rmdir()
