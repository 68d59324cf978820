"""What the kernel sweeps (bench/tune_*.py) share: the Gemma-4-26B-A4B linear shapes, the --shapes
and --configs parsing, and random weights with the rotating copies of ``nvfp4tools bench``'s graph
timing (each call reads another copy, calls replayed from one CUDA graph: nvfp4tools/gpubench.py).
"""

from __future__ import annotations

import numpy as np

from nvfp4tools.gpubench import graph_time_us, rotating_copies  # noqa: F401  (the sweeps import it from here)
from nvfp4tools.kernels_ref.gpu.nvfp4_gemm import random_weight

# the eight distinct linear shapes (N, K) of Gemma-4-26B-A4B
SHAPES = [(8192, 2816), (2816, 8192), (2816, 4096), (4096, 2816), (2816, 2112), (2112, 2816), (704, 2816), (2816, 704)]


def parse_shapes(arg: str | None) -> list[tuple[int, int]]:
    """"NxK,NxK" -> [(N, K), ...]; None -> the eight Gemma-4-26B shapes."""
    return [tuple(int(v) for v in s.split("x")) for s in arg.split(",")] if arg else SHAPES


def parse_configs(arg: str) -> list[tuple[int, ...]]:
    """"a,b,c;d,e,f" -> [(a, b, c), (d, e, f)] (the sweeps' --configs)."""
    return [tuple(int(v) for v in c.split(",")) for c in arg.split(";")]


def shape_args(ap) -> None:
    """--json and --shapes, which every sweep takes."""
    ap.add_argument("--json", default=None)
    ap.add_argument("--shapes", default=None, help="NxK,... (default: the eight Gemma-4-26B shapes)")


def shape_weights(shapes_arg: str | None):
    """Per shape of --shapes: (N, K, a random NVFP4 weight (seed 0, as every sweep), its
    rotating copies (NVFP4 parts, bf16))."""
    rng = np.random.default_rng(0)
    for n, k in parse_shapes(shapes_arg):
        gw = random_weight(n, k, rng)
        qs, ws = rotating_copies(gw)
        yield n, k, gw, qs, ws
