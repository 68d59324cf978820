"""How the kernel's copy_file_range speed depends on where a copy starts: the same file copied
from offset X to offset X of a new file (X = 0, 4 KiB, 123 bytes past a page, a page-aligned
header's length, 64 KiB, 1 MiB), 128 MiB requests, page cache warm, `sync` before each run;
`cp` of the whole file beside. Behind the early copy's 64 KiB alignment (nvfp4tools/early_copy.py).

    python bench/copy_align.py FILE [--runs 4]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import time

OFFSETS = [0, 4096, 4096 + 123, 1490944, 65536, 1 << 20]


def copy_from(src: str, dst: str, off: int) -> float:
    size = os.path.getsize(src)
    fi = os.open(src, os.O_RDONLY)
    fo = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        t = time.perf_counter()
        os.ftruncate(fo, size)
        done, n = 0, size - off
        while done < n:
            done += os.copy_file_range(fi, fo, min(128 << 20, n - done), off + done, off + done)
        return time.perf_counter() - t
    finally:
        os.close(fi)
        os.close(fo)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("file")
    ap.add_argument("--runs", type=int, default=4)
    a = ap.parse_args()
    dst = a.file + ".copy-align"
    res: dict[str, list[float]] = {}
    try:
        for _ in range(a.runs):
            for off in ["cp", *OFFSETS]:
                if os.path.exists(dst):
                    os.unlink(dst)
                subprocess.run(["sync"], check=True)
                if off == "cp":
                    t = time.perf_counter()
                    subprocess.run(["cp", a.file, dst], check=True)
                    el = time.perf_counter() - t
                else:
                    el = copy_from(a.file, dst, off)
                res.setdefault(str(off), []).append(el)
    finally:
        if os.path.exists(dst):
            os.unlink(dst)
    size = os.path.getsize(a.file) / 2**30
    print(f"{a.file}: {size:.2f} GiB, {a.runs} runs")
    for k, v in res.items():
        label = "cp" if k == "cp" else f"from offset {int(k):>8} (mod 64 KiB = {int(k) % 65536:>5})"
        print(f"{label:40s} median {statistics.median(v):.2f} s  min {min(v):.2f} s  runs: "
              + " ".join(f"{x:.2f}" for x in v))


if __name__ == "__main__":
    main()
