"""convert's peak memory on a full-size Gemma-4-26B-A4B ModelOpt NVFP4 checkpoint (header-only:
sparse files, every tensor full size on paper, ~60 MB of disk), to compressed-tensors and to GGUF,
beside ``inspect`` of the same checkpoint (the floor: reading its headers) in the same run. Each
command runs in a fresh interpreter that reports its own peak resident memory. The outputs are
sparse too (the writers leave all-zero chunks as holes) and are deleted afterwards.

    python bench/convert_memory.py [--dir /tmp/nvfp4tools-bench-g26-header] [--preset gemma4-26b-a4b]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

MiB = 2**20

# the child: run one CLI command, then print its exit code and peak RSS on stderr's last line
MEASURE = r"""
import json, resource, sys
from nvfp4tools.cli import main
code = 0
try:
    main(sys.argv[1:])
except SystemExit as e:
    code = e.code
print(json.dumps({"code": code, "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}),
      file=sys.stderr)
"""


def measure(*args: str) -> tuple[float, int, int]:
    """(wall seconds, peak RSS bytes, exit code) of ``nvfp4tools ARGS``."""
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", MEASURE, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                       text=True)
    wall = time.perf_counter() - t0
    stats = json.loads(r.stderr.strip().splitlines()[-1])
    return wall, stats["peak_rss_bytes"], stats["code"] or 0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", default="/tmp/nvfp4tools-bench-g26-header")
    ap.add_argument("--preset", default="gemma4-26b-a4b")
    a = ap.parse_args()
    if not os.path.isdir(a.dir):
        from nvfp4tools.synth import synthesize

        synthesize(a.dir, preset=a.preset, fmt="modelopt", recipe="all-linear", header_only=True)
    print("| command | wall | peak RSS | exit |")
    print("|---|---|---|---|")
    wall, rss, code = measure("inspect", a.dir, "--format", "json")
    print(f"| `nvfp4tools inspect` (baseline) | {wall:.1f} s | {rss / MiB:.0f} MiB | {code} |", flush=True)
    out = tempfile.mkdtemp(prefix="nvfp4tools-convert-memory-")
    try:
        for to, name in (("compressed-tensors", "ct"), ("gguf", "model.gguf")):
            dst = os.path.join(out, name)
            wall, rss, code = measure("convert", a.dir, dst, "--to", to, "--format", "json")
            print(f"| `nvfp4tools convert --to {to}` | {wall:.1f} s | {rss / MiB:.0f} MiB | {code} |", flush=True)
            if os.path.isdir(dst):
                shutil.rmtree(dst)
            elif os.path.exists(dst):
                os.remove(dst)
    finally:
        shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
