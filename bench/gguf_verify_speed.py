"""``verify --sample 64`` on a full-size Gemma-4-26B-A4B Q4_0 GGUF, page cache warm and cold.

The file is synth_gguf's full-size header (llama.cpp's names and metadata, stacked experts
[128, 704, 2816]) with every Q4_0 tensor filled with valid blocks, tiled from one chunk that the
reference quantizer made from random weights (not all zero: verify's degenerate check would fail
a zeroed layer). About 15 GB on disk; deleted afterwards unless --keep. "Cold" evicts the file's
pages only (``posix_fadvise(POSIX_FADV_DONTNEED)``), nothing else on the machine.

    python bench/gguf_verify_speed.py DIR [--keep]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np


def build(path: str) -> int:
    from nvfp4tools import formats
    from nvfp4tools.kernels_ref.ggml_quants import quantize_q4_0
    from nvfp4tools.synth_gguf import write_gemma4_gguf

    write_gemma4_gguf(path, preset="gemma4-26b-a4b", qtype="q4_0", header_only=True)
    chunk = quantize_q4_0(np.random.default_rng(0).standard_normal((4096, 512)).astype(np.float32) * 0.02).tobytes()
    ck = formats.read(path)
    with open(path, "r+b") as fh:
        for t in ck.tensors.values():
            p = t.part("data")
            if p.stored_dtype != "Q4_0":
                continue
            fh.seek(p.offset)
            for off in range(0, p.nbytes, len(chunk)):   # len(chunk) is a whole number of blocks
                fh.write(chunk[:min(len(chunk), p.nbytes - off)])
        fh.flush()
        os.fsync(fh.fileno())
    return os.path.getsize(path)


def evict(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def timed(*args: str) -> tuple[float, dict]:
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "nvfp4tools", *args, "--format", "json"], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode not in (0, 1):
        raise SystemExit(f"nvfp4tools {' '.join(args)} exited {r.returncode}: {r.stderr[-2000:]}")
    return wall, json.loads(r.stdout)


def main(argv: list[str]) -> int:
    out, keep = argv[0], "--keep" in argv
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, "gemma4-26b-a4b-Q4_0.gguf")
    t0 = time.perf_counter()
    size = build(path)
    print(f"built {path}: {size / 1e9:.2f} GB in {time.perf_counter() - t0:.0f} s", flush=True)
    try:
        for cache in ("cold", "warm"):
            if cache == "cold":
                evict(path)
            wall, rep = timed("verify", path, "--sample", "64")
            units = rep["summary"]["n_layers"]
            kinds = sorted({(x["role"], x["expert"] is not None) for x in rep["layers"]})
            print(f"verify --sample 64 ({cache} cache): {wall:.2f} s wall, {units} layers, verdict {rep['verdict']}, "
                  f"{sum(x['expert'] is not None for x in rep['layers'])} expert slices; roles {kinds}", flush=True)
        wall, rep = timed("inspect", path)
        print(f"inspect: {wall:.2f} s wall, {rep['summary']['n_tensors']} tensors", flush=True)
    finally:
        if not keep:
            os.remove(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
