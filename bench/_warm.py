"""Bring a checkpoint folder into the page cache before timing anything against it.

The convert targets are stated for a warm page cache, and the development VM's DAMON pages out
file cache left alone for a minute: bench/convert_speed.py, started after a pause, timed its
first run at 6.33 s against a source partly back on disk (commit 2d4976d).
"""

from __future__ import annotations

import os
import time


def warm(folder: str) -> str:
    """Read every file of FOLDER once; a line saying how much and how long."""
    buf = memoryview(bytearray(64 * 2**20))   # (one buffer: fresh 64 MiB reads fault in new pages each time)
    t0 = time.perf_counter()
    n = 0
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            with open(path, "rb", buffering=0) as fh:
                while k := fh.readinto(buf):
                    n += k
    return f"warmed the page cache: {n / 2**30:.2f} GiB read in {time.perf_counter() - t0:.2f} s"
