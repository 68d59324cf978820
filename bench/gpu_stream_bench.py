"""Engine-like timing of the Triton NVFP4 kernel against cuBLAS bf16: each call reads a different
copy of the weight (copies enough to exceed the L2 cache several times over, as successive layers
of a model do) and the calls are replayed from one CUDA graph (as engines launch decode), so the
per-call launch cost and L2-flush interplay of bench/gpu_bench.py's single-call timing drop out.
Also times an empty kernel under gpu_bench.py's method to show that method's fixed floor.

    python bench/gpu_stream_bench.py [--json out.json]
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
import triton

from nvfp4tools.gpubench import copies_for, graph_time_us, rotating_copies  # noqa: F401  (the kernel benches import them from here)
from nvfp4tools.kernels_ref.gpu.nvfp4_gemm import default_config, nvfp4_w4a16_gemm, random_weight

SHAPES = [(8192, 2816), (2816, 8192), (2816, 4096), (4096, 2816), (2816, 2112), (2112, 2816), (704, 2816), (2816, 704)]
MS = (1, 16, 128)


@triton.jit
def _empty(x_ptr):
    pass


def parse_shapes(arg: str | None) -> list[tuple[int, int]]:
    """"NxK,NxK" -> [(N, K), ...]; None -> the eight Gemma-4-26B shapes."""
    return [tuple(int(v) for v in s.split("x")) for s in arg.split(",")] if arg else SHAPES


def parse_configs(arg: str) -> list[tuple[int, ...]]:
    """"a,b,c;d,e,f" -> [(a, b, c), (d, e, f)] (the kernel benches' --configs)."""
    return [tuple(int(v) for v in c.split(",")) for c in arg.split(";")]


def shape_args(ap) -> None:
    """--json and --shapes, which every kernel bench takes."""
    ap.add_argument("--json", default=None)
    ap.add_argument("--shapes", default=None, help="NxK,... (default: the eight Gemma-4-26B shapes)")


def shape_weights(shapes_arg: str | None):
    """Per shape of --shapes: (N, K, a random NVFP4 weight (seed 0, as every bench), its
    rotating copies (NVFP4 parts, bf16))."""
    rng = np.random.default_rng(0)
    for n, k in parse_shapes(shapes_arg):
        gw = random_weight(n, k, rng)
        qs, ws = rotating_copies(gw)
        yield n, k, gw, qs, ws


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    dummy = torch.empty(1, device="cuda")
    floor = triton.testing.do_bench(lambda: _empty[(1,)](dummy), warmup=25, rep=200, return_mode="median") * 1e3
    print(f"device: {torch.cuda.get_device_name(0)}; empty kernel under do_bench (gpu_bench.py's method): "
          f"{floor:.1f} us")
    print(f"{'N':>5} {'K':>5} {'M':>4} | {'bf16 us':>8} {'copies':>6} | {'triton us':>9} {'copies':>6} | "
          f"{'x bf16':>7} {'GB/s':>6} {'bf16 GB/s':>9}")
    rng = np.random.default_rng(0)
    rows = []
    for n, k in SHAPES:
        gw = random_weight(n, k, rng)
        g = gw.global_scale
        qs, ws = rotating_copies(gw)
        qbytes, bbytes, nq, nb = gw.nbytes, n * k * 2, len(qs), len(ws)
        for m in MS:
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            cfg = default_config(m, n, k, in_graph=True)   # as the graph replays it
            t_b = graph_time_us([lambda wi=wi: torch.matmul(x, wi.T) for wi in ws])
            t_q = graph_time_us([lambda p=p, s=s: nvfp4_w4a16_gemm(x, p, s, g) for p, s in qs])
            row = {"N": n, "K": k, "M": m, "bf16_us": t_b, "triton_us": t_q, "speedup_vs_bf16": t_b / t_q,
                   "triton_GBps": qbytes / t_q / 1e3, "bf16_GBps": bbytes / t_b / 1e3, "copies": [nb, nq],
                   "kernel": cfg[0], "config": list(cfg[1])}
            rows.append(row)
            print(f"{n:>5} {k:>5} {m:>4} | {t_b:8.1f} {nb:>6} | {t_q:9.1f} {nq:>6} | {t_b / t_q:6.2f}x "
                  f"{row['triton_GBps']:6.0f} {row['bf16_GBps']:9.0f}  {cfg[0]}")
    if a.json:
        with open(a.json, "w") as fh:
            json.dump({"empty_kernel_do_bench_us": floor, "rows": rows}, fh, indent=1)


if __name__ == "__main__":
    main()
