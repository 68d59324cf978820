"""Host cost per call of the Triton NVFP4 kernels (what an un-graphed caller pays before the GPU
sees the launch), with and without TMA descriptors at M = 128, beside the single-call GPU time
under triton.testing.do_bench (gpu_bench.py's method) and the CUDA-graph time.

    python bench/gpu_launch_overhead.py [--shapes 8192x2816,2816x8192]
"""

from __future__ import annotations

import argparse
import time

import torch
import triton
from gpu_stream_bench import graph_time_us, shape_args, shape_weights
from nvfp4tools.kernels_ref.gpu.nvfp4_gemm import _config, nvfp4_w4a16_gemm


def host_us(fn, calls: int = 300) -> float:
    """Median over 5 rounds of the host time per call, calls queued without synchronising."""
    rounds = []
    for _ in range(5):
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(calls):
            fn()
        rounds.append((time.perf_counter() - t) / calls * 1e6)
        torch.cuda.synchronize()
    return sorted(rounds)[2]


def main() -> None:
    ap = argparse.ArgumentParser()
    shape_args(ap)
    ap.add_argument("--m", type=int, default=128)
    a = ap.parse_args()
    print(f"device: {torch.cuda.get_device_name(0)}, triton {triton.__version__}")
    print(f"{'N':>5} {'K':>5} {'M':>4} {'TMA':>3} | {'host us/call':>12} | {'do_bench us':>11} | {'graph us':>8}")
    for n, k, gw, qs, _ws in shape_weights(a.shapes or "8192x2816,2816x8192"):
        x = torch.randn(a.m, k, device="cuda", dtype=torch.bfloat16)
        cfg = _config(a.m, n, k)
        for tma in (0, 1):
            c = cfg[:8] + (tma,)
            def fn(c=c):
                return nvfp4_w4a16_gemm(x, gw.packed, gw.scales, gw.global_scale, config=c)
            fn()
            h = host_us(fn)
            d = triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median") * 1e3
            g = graph_time_us([lambda p=p, s=s, c=c: nvfp4_w4a16_gemm(x, p, s, gw.global_scale, config=c) for p, s in qs])
            print(f"{n:>5} {k:>5} {a.m:>4} {tma:>3} | {h:12.1f} | {d:11.1f} | {g:8.1f}")


if __name__ == "__main__":
    main()
