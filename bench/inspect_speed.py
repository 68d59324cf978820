"""inspect speed on a header-only, full-size Gemma-4-26B-A4B all-linear NVFP4 checkpoint with
per-expert tensors (about 47,000 tensors in 4 shards), beside a bare `python -c` that only parses
the same headers with json. Wall time including interpreter start-up, median of N runs.

    python bench/inspect_speed.py [--runs 5] [--dir /tmp/nvfp4tools-bench-g26]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

BARE = r"""
import json, struct, sys, os
d = sys.argv[1]
n = 0
for f in sorted(os.listdir(d)):
    if f.endswith('.safetensors'):
        with open(os.path.join(d, f), 'rb') as fh:
            (k,) = struct.unpack('<Q', fh.read(8))
            n += len(json.loads(fh.read(k)))
print(n)
"""


def wall(cmd: list[str], runs: int) -> tuple[float, str]:
    times = []
    out = ""
    for _ in range(runs):
        t0 = time.perf_counter()
        r = subprocess.run(cmd, capture_output=True, text=True)
        times.append(time.perf_counter() - t0)
        out = r.stdout
        if r.returncode not in (0, 1):
            raise SystemExit(f"{cmd} failed: {r.stderr}")
    return statistics.median(times), out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--dir", default="/tmp/nvfp4tools-bench-g26")
    a = ap.parse_args()
    if not os.path.isfile(os.path.join(a.dir, "model.safetensors.index.json")):
        from nvfp4tools.synth import synthesize
        synthesize(a.dir, preset="gemma4-26b-a4b", fmt="modelopt", recipe="all-linear", header_only=True, shards=4)
    exe = os.path.join(os.path.dirname(sys.executable), "nvfp4tools")
    t_bare, n = wall([sys.executable, "-c", BARE, a.dir], a.runs)
    t_tool, _ = wall([exe, "inspect", a.dir], a.runs)
    t_json, _ = wall([exe, "inspect", a.dir, "--format", "json"], a.runs)
    print(f"checkpoint: {a.dir} ({n.strip()} header entries)")
    print(f"bare json header parse (python -c): {t_bare:.3f} s")
    print(f"nvfp4tools inspect (table):         {t_tool:.3f} s")
    print(f"nvfp4tools inspect --format json:   {t_json:.3f} s")


if __name__ == "__main__":
    main()
