"""inspect speed on a header-only, full-size Gemma-4-26B-A4B all-linear NVFP4 checkpoint with
per-expert tensors (about 47,000 tensors in 4 shards), beside a bare `python -c` that only parses
the same headers with json. Wall time including interpreter start-up; the three commands are
interleaved so a machine whose speed drifts (ours varies by 1.5x within minutes) slows all
three alike; min and median of N runs.

Two ways of running nvfp4tools are timed:
- `installed`: the package laid out as a wheel installs it (nvfp4tools/, nvfp4tools/formats,
  nvfp4tools/kernels_ref, byte-compiled) in a throw-away venv whose only other path is this
  venv's site-packages (the dependencies). This is what a user who ran `pip install nvfp4tools`
  gets.
- `editable`: this checkout's `nvfp4tools` entry point. A setuptools editable install adds a
  meta-path finder that every interpreter start imports (~40 ms: pathlib, importlib.util).

    python bench/inspect_speed.py [--runs 7] [--dir /tmp/nvfp4tools-bench-g26]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

from _installed import installed_python

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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--dir", default="/tmp/nvfp4tools-bench-g26")
    a = ap.parse_args()
    if not os.path.isfile(os.path.join(a.dir, "model.safetensors.index.json")):
        from nvfp4tools.synth import synthesize
        synthesize(a.dir, preset="gemma4-26b-a4b", fmt="modelopt", recipe="all-linear", header_only=True, shards=4)
    with tempfile.TemporaryDirectory() as work:
        py = installed_python(work)
        exe = os.path.join(os.path.dirname(sys.executable), "nvfp4tools")
        cmds = {
            "bare json header parse (python -c)": [sys.executable, "-c", BARE, a.dir],
            "nvfp4tools inspect, installed (table)": [py, "-m", "nvfp4tools", "inspect", a.dir],
            "nvfp4tools inspect, installed --format json": [py, "-m", "nvfp4tools", "inspect", a.dir,
                                                            "--format", "json"],
            "nvfp4tools inspect, editable (table)": [exe, "inspect", a.dir],
        }
        times: dict[str, list[float]] = {k: [] for k in cmds}
        n = ""
        for _ in range(a.runs):
            for label, cmd in cmds.items():
                t0 = time.perf_counter()
                r = subprocess.run(cmd, capture_output=True, text=True, cwd=work)
                times[label].append(time.perf_counter() - t0)
                if r.returncode not in (0, 1):
                    raise SystemExit(f"{cmd} failed: {r.stderr}")
                if label.startswith("bare"):
                    n = r.stdout.strip()
    print(f"checkpoint: {a.dir} ({n} header entries), {a.runs} interleaved runs")
    for label, ts in times.items():
        print(f"{label:46s} min {min(ts):.3f} s   median {statistics.median(ts):.3f} s")


if __name__ == "__main__":
    main()
