"""inspect speed on a header-only, full-size Gemma-4-26B-A4B Q4_0 GGUF (generated sparse), beside
gguf-py's `gguf-dump` on the same file, in one run (median of N, wall time incl. start-up).

    python bench/gguf_inspect_speed.py [--runs 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time


def wall(cmd: list[str], runs: int) -> float:
    t = []
    for _ in range(runs):
        t0 = time.perf_counter()
        r = subprocess.run(cmd, capture_output=True)
        t.append(time.perf_counter() - t0)
        if r.returncode not in (0, 1):
            raise SystemExit(f"{cmd}: {r.stderr.decode()[-500:]}")
    return statistics.median(t)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--file", default="/tmp/nvfp4tools-bench-g26-q4_0.gguf")
    a = ap.parse_args()
    if not os.path.isfile(a.file):
        from nvfp4tools.synth_gguf import write_gemma4_gguf
        write_gemma4_gguf(a.file, preset="gemma4-26b-a4b", qtype="q4_0", header_only=True)
    bindir = os.path.dirname(sys.executable)
    ours = wall([os.path.join(bindir, "nvfp4tools"), "inspect", a.file], a.runs)
    dump = wall([os.path.join(bindir, "gguf-dump"), "--no-tensors", a.file], a.runs)
    dump_t = wall([os.path.join(bindir, "gguf-dump"), a.file], a.runs)
    print(f"file: {a.file} ({os.path.getsize(a.file) / 2**30:.2f} GiB apparent, sparse)")
    print(f"nvfp4tools inspect:        {ours:.3f} s")
    print(f"gguf-dump --no-tensors:    {dump:.3f} s")
    print(f"gguf-dump (with tensors):  {dump_t:.3f} s")


if __name__ == "__main__":
    main()
