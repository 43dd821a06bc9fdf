"""Host memory of worker processes, read from /proc: the sampling process of ``host_memory``.

    python pss_sampler.py DIRECTORY INTERVAL PID...   # "time bytes" lines once stdin closes

Standard library only, and run by path, so that it starts at once and never
competes for the GIL with the scheduler it measures around.  Host memory is
the processes' PSS minus their PSS in shared memory (``/proc/<pid>/smaps_rollup``),
plus the allocated size of dedupgraph's files in DIRECTORY: every byte once.
"""

from __future__ import annotations

import os
import select
import sys
import time
from collections.abc import Sequence

PREFIX = "dedupgraph-"  # dedupgraph.placement.segments.PREFIX, not imported: this module imports nothing


def smaps_rollup(pid: int) -> dict[str, int]:
    """The byte counts of ``/proc/<pid>/smaps_rollup``; empty for a process that is gone."""
    fields = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                name, _, rest = line.partition(":")
                parts = rest.split()
                if len(parts) == 2 and parts[1] == "kB":
                    fields[name] = int(parts[0]) * 1024
    except OSError:  # a worker that just died
        pass
    return fields


def segments(directory: str) -> int:
    """Allocated bytes of dedupgraph's files in ``directory``."""
    total = 0
    with os.scandir(directory) as entries:
        for entry in entries:
            if entry.name.startswith(PREFIX):
                try:
                    total += entry.stat(follow_symlinks=False).st_blocks * 512
                except OSError:  # removed meanwhile
                    pass
    return total


def host_memory(pids: Sequence[int], directory: str) -> int:
    total = 0
    for pid in pids:
        fields = smaps_rollup(pid)
        total += fields.get("Pss", 0) - fields.get("Pss_Shmem", 0)
    return total + segments(directory)


def sample_until_eof(directory: str, interval: str, *pids: str) -> None:
    numbers = [int(p) for p in pids]
    print("ready", flush=True)
    rows = []
    while not select.select([sys.stdin], [], [], float(interval))[0]:
        rows.append(f"{time.monotonic()} {host_memory(numbers, directory)}")
    rows.append(f"{time.monotonic()} {host_memory(numbers, directory)}")
    print("\n".join(rows))


if __name__ == "__main__":
    sample_until_eof(*sys.argv[1:])
