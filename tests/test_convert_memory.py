"""convert's memory does not grow with the model: a full-size Gemma-4-26B-A4B (header-only, sparse
files) converted to GGUF peaks under 256 MiB of resident memory, measured in the converting process.

The GGUF direction re-encodes every NVFP4 byte (ModelOpt's packing into ggml's 36-byte blocks), the
costliest path for memory; ~45 s on 2 cores. The output is sparse too: the writer leaves all-zero
chunks as holes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

MiB = 2**20
LIMIT = 256 * MiB

# The peak is VmHWM of the converting process's own address space (/proc/self/status). Not
# getrusage's ru_maxrss: Linux carries the pre-exec peak over an exec, so a child of a pytest that
# has loaded torch would report the parent's ~850 MiB.
_MEASURE = r"""
import json, sys
from nvfp4tools.cli import main
code = 0
try:
    main(sys.argv[1:])
except SystemExit as e:
    code = e.code
with open("/proc/self/status") as fh:
    kib = next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:"))
print(json.dumps({"code": code, "peak_rss_bytes": kib * 1024}), file=sys.stderr)
"""


def test_full_size_26b_to_gguf_peak_rss(tmp_path):
    from nvfp4tools.synth import synthesize

    src, dst = str(tmp_path / "g26"), str(tmp_path / "g26.gguf")
    synthesize(src, preset="gemma4-26b-a4b", fmt="modelopt", recipe="all-linear", header_only=True)
    r = subprocess.run([sys.executable, "-c", _MEASURE, "convert", src, dst, "--to", "gguf", "--format", "json"],
                       capture_output=True, text=True)
    stats = json.loads(r.stderr.strip().splitlines()[-1])
    assert stats["code"] in (0, None), r.stderr[-2000:]
    report = json.loads(r.stdout)
    assert report["lossless"] and os.path.getsize(dst) > 14 * 2**30   # the whole 26B model was written (14.2 GiB)
    assert stats["peak_rss_bytes"] < LIMIT, f"peak RSS {stats['peak_rss_bytes'] / MiB:.0f} MiB"
