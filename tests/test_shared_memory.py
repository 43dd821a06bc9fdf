"""Shared-memory segments (dedupgraph.placement.segments): made, mapped, locked, removed.

Real files in a directory of /dev/shm of their own (DEDUPGRAPH_SHM_DIR), real
processes for everything that concerns more than one.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

from dedupgraph.placement import segments as sm

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="POSIX shared memory: Linux only")

DIGEST = "0123456789abcdef" * 2


@pytest.fixture
def shm(tmp_path_factory, monkeypatch):
    """An empty directory on /dev/shm (tmpfs, as in production), for this test only."""
    base = "/dev/shm" if os.path.isdir("/dev/shm") else None
    import tempfile

    path = tempfile.mkdtemp(prefix="test-dedupgraph-", dir=base)
    monkeypatch.setenv(sm.DIR_VARIABLE, path)
    yield sm.Path(path)
    gc.collect()
    leftovers = os.listdir(path)
    for name in leftovers:
        os.unlink(os.path.join(path, name))
    os.rmdir(path)
    assert not leftovers, f"segments left behind: {leftovers}"


def filled(data: bytes):
    def fill(write):
        write(0, data)

    return fill


def names(directory) -> list[str]:
    return sorted(os.listdir(directory))


def run_python(code: str, *args: str, **kwargs) -> subprocess.Popen:
    """Another process, with the same DEDUPGRAPH_SHM_DIR."""
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def test_made_once_mapped_read_only_and_removed_with_its_last_view(shm):
    view = sm.create(DIGEST, 16, 0.5, filled(b"0123456789abcdef"))
    assert bytes(view) == b"0123456789abcdef" and view.readonly
    assert names(shm) == [sm.segment_name(DIGEST)]
    (path,) = shm.iterdir()
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    again = sm.attach(DIGEST, 16)
    assert bytes(again) == bytes(view)
    array = np.frombuffer(again[4:12], dtype="u1")
    with pytest.raises(ValueError, match="read-only"):
        array[0] = 1
    del view, again
    gc.collect()
    assert names(shm), "an array made from it still uses it"
    del array
    gc.collect()
    assert names(shm) == []
    assert sm.attach(DIGEST, 16) is None


def test_attach_refuses_other_sizes_and_names_that_are_not_digests(shm):
    view = sm.create(DIGEST, 16, 0.5, filled(b"x" * 16))
    assert sm.attach(DIGEST, 17) is None
    with pytest.raises(ValueError, match="not a content digest"):
        sm.attach("../../etc/passwd", 16)
    del view


def test_the_limit_and_the_space_left_make_it_fall_back_with_one_debug_line(shm, caplog):
    caplog.set_level(logging.DEBUG, logger="dedupgraph")
    assert sm.create(DIGEST, 2**20, 2**20 - 1, filled(b"\0" * 2**20)) is None
    assert "kept per process" in caplog.text and "exceed its limit" in caplog.text
    # a fraction of the file system's size: a millionth of /dev/shm is far below 64 MiB
    assert sm.create(DIGEST, 64 * 2**20, 1e-6, filled(b"")) is None
    assert names(shm) == []
    with pytest.raises(sm.NoRoom, match="free"):
        with sm.SegmentWriter(DIGEST, 2**62, 2**63):
            pass
    # segments already there count against the limit
    first = sm.create("ab" * 16, 2**20, 3 * 2**20 // 2, filled(b"\1" * 2**20))
    assert first is not None
    assert sm.create("cd" * 16, 2**20, 3 * 2**20 // 2, filled(b"\2" * 2**20)) is None
    del first


def test_a_failing_fill_leaves_nothing(shm):
    def fail(write):
        write(0, b"half")
        raise RuntimeError("source gone")

    with pytest.raises(RuntimeError, match="source gone"):
        sm.create(DIGEST, 16, 0.5, fail)
    assert names(shm) == []


def test_racing_writers_publish_one_segment(shm):
    views, errors = [], []
    start = threading.Barrier(4)

    def make():
        try:
            start.wait()
            views.append(sm.create(DIGEST, 2**20, 0.5, filled(b"\7" * 2**20)))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=make) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(views) == 4 and all(v is not None and v[0] == 7 for v in views)
    assert names(shm) == [sm.segment_name(DIGEST)]  # and no temporary file left
    del views


ATTACH_AND_WAIT = """
    import sys
    from dedupgraph.placement import segments as sm
    view = sm.attach(sys.argv[1], int(sys.argv[2]))
    print("none" if view is None else bytes(view[:4]).decode(), flush=True)
    sys.stdin.read()   # hold it until told
"""


def test_removed_only_when_no_process_maps_it(shm):
    view = sm.create(DIGEST, 16, 0.5, filled(b"abcd" * 4))
    other = run_python(ATTACH_AND_WAIT, DIGEST, "16")
    assert other.stdout.readline().strip() == "abcd"
    del view
    gc.collect()
    assert names(shm) == [sm.segment_name(DIGEST)], "removed while another process maps it"
    assert sm.sweep() == []  # a sweep leaves it too
    other.communicate("")  # the other process exits normally: it was the last
    assert names(shm) == []


def test_a_killed_holder_leaves_a_segment_that_the_next_release_removes(shm):
    assert sm.attach("ff" * 16, 16) is None  # this process has used the directory: no sweep below
    killed = run_python(
        """
        import os, signal, sys
        from dedupgraph.placement import segments as sm
        view = sm.create(sys.argv[1], 16, 0.5, lambda write: write(0, b"z" * 16))
        print("made", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
        """,
        DIGEST,
    )
    assert killed.stdout.readline().strip() == "made"
    assert killed.wait() == -signal.SIGKILL
    assert names(shm) == [sm.segment_name(DIGEST)]
    # the next process that maps it and lets it go is the last: it removes it
    view = sm.attach(DIGEST, 16)
    assert bytes(view) == b"z" * 16
    del view
    gc.collect()
    assert names(shm) == []


def test_leftovers_of_crashed_processes_are_swept_and_live_ones_are_not(shm):
    code = """
        import os, signal, sys
        from dedupgraph.placement import segments as sm
        writer = sm.SegmentWriter(sys.argv[1], 16, 0.5)
        writer.__enter__()                    # reserved, never published: an unfinished one
        view = sm.create(sys.argv[2], 16, 0.5, lambda write: write(0, b"y" * 16))
        print("made", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """
    killed = run_python(code, "ab" * 16, DIGEST)
    assert killed.stdout.readline().strip() == "made"
    killed.wait()
    leftovers = names(shm)
    assert len(leftovers) == 2 and any(n.endswith(".tmp") for n in leftovers)
    # the first use of a directory in a process removes what nobody uses
    live = sm.create("cd" * 16, 16, 0.5, filled(b"w" * 16))
    assert names(shm) == [sm.segment_name("cd" * 16)]
    assert sm.sweep() == []  # and a sweep leaves what a process uses
    assert names(shm) == [sm.segment_name("cd" * 16)]
    del live


def test_a_forked_child_never_releases_the_parents_lock(shm):
    view = sm.create(DIGEST, 16, 0.5, filled(b"f" * 16))
    pid = os.fork()
    if pid == 0:  # the child shares the parent's lock: letting its copy go must not drop it
        try:
            del view
            gc.collect()
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    assert sm.sweep() == []  # still locked by us
    assert names(shm) == [sm.segment_name(DIGEST)]
    del view
    gc.collect()
    assert names(shm) == []


def test_no_shared_memory_here_logs_once_and_gives_none(monkeypatch, caplog, tmp_path):
    caplog.set_level(logging.INFO, logger="dedupgraph")
    monkeypatch.setenv(sm.DIR_VARIABLE, str(tmp_path / "missing"))
    sm._no_shared_memory.cache_clear()
    assert sm.segment_dir() is None and sm.segment_dir() is None
    assert sm.create(DIGEST, 16, 0.5, filled(b"q" * 16)) is None
    assert caplog.text.count("share='host' needs POSIX shared memory") == 1


def test_layout_aligns_every_buffer():
    offsets, total = sm.layout((1, 100, 0, 7))
    assert offsets == (0, 64, 192, 192) and total == 199
    assert all(o % sm.ALIGN == 0 for o in offsets)
