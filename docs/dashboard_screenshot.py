"""Retake ``docs/_static/dashboard.png``: the ``/dedupgraph`` page while three computations hold their objects.

    DASK_DEDUPGRAPH__ENABLED=True python docs/dashboard_screenshot.py

It needs Debian's ``chromium`` (``apt-get install chromium``) on the ``PATH``. The
variable switches the scheduler route on in the LocalCluster's scheduler, as it
would on a deployment; the script refuses to run without it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import dask
import dask.array as da
import dask.bag as db
import numpy as np
import pandas as pd
from distributed import Client, Event, LocalCluster, wait

HOLD = "dedupgraph-screenshot"
OUTPUT = Path(__file__).parent / "_static" / "dashboard.png"


class Mapper:
    def __init__(self, table: pd.Series) -> None:
        self.table = table


# The tasks wait until the screenshot is taken: the cluster holds a hoisted
# object only while a task that uses it has yet to run. The cluster has a
# thread for each task, so that every hoisted object is computed meanwhile.
def apply_mapper(block: np.ndarray, mapper: Mapper) -> np.ndarray:
    Event(HOLD).wait(timeout=300)
    return block + len(mapper.table)


def scaled(x: int, weights: np.ndarray) -> float:
    Event(HOLD).wait(timeout=300)
    return float(x * weights.sum())


def shown(port: int, deadline: float = 60.0) -> str:
    """The page once it lists three held objects."""
    end = time.monotonic() + deadline
    while True:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/dedupgraph", timeout=30) as response:
            page = response.read().decode()
        held = page.split("Since the route")[0]
        if held.count("<code>dedup-") >= 3 or time.monotonic() > end:
            return page
        time.sleep(0.5)


def main() -> None:
    if os.environ.get("DASK_DEDUPGRAPH__ENABLED", "").lower() not in {"true", "1", "yes"}:
        sys.exit("set DASK_DEDUPGRAPH__ENABLED=True: the page is the scheduler route's")
    with LocalCluster(n_workers=2, threads_per_worker=20, dashboard_address=":0") as cluster, Client(cluster) as client:
        port = cluster.scheduler.http_server.port
        mapper = Mapper(pd.Series(range(30_000)))
        weights = np.arange(50_000, dtype="float64")
        doubled = weights * 2
        held = [
            da.zeros((16, 10), chunks=(1, 10)).map_blocks(apply_mapper, mapper, meta=np.empty((0, 0))).persist(),
            db.from_sequence(range(16), npartitions=8).map(scaled, weights).persist(),
            client.compute([dask.delayed(scaled)(i, doubled) for i in range(6)]),
        ]
        page = shown(port)
        if page.split("Since the route")[0].count("<code>dedup-") < 3:
            sys.exit("the page does not show three held objects; not taking the screenshot:\n" + re.sub("<[^>]+>", " ", page))
        with tempfile.TemporaryDirectory() as profile:
            subprocess.run(
                [
                    "chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    "--no-first-run", f"--user-data-dir={profile}", "--window-size=1400,720",
                    f"--screenshot={OUTPUT}", f"http://127.0.0.1:{port}/dedupgraph",
                ],
                check=True, timeout=120, capture_output=True,
            )
        Event(HOLD).set()
        wait(held)
    print(f"wrote {OUTPUT}")


if __name__ == "__main__":
    main()
