"""Reference-kernel speed: dequantizing a 2816 x 2112 NVFP4 weight and the reference GEMM at M=16,
beside numpy's own float32 matmul of the same shapes (median of N runs, one process).

    python bench/kernels_ref_speed.py [--runs 20]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from nvfp4tools.kernels_ref.gemm import gemm_reference
from nvfp4tools.kernels_ref.nvfp4 import dequantize_nvfp4, quantize_nvfp4


def timeit(fn, runs: int) -> float:
    fn()
    t = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        t.append(time.perf_counter() - t0)
    return statistics.median(t)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=20)
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    n, k, m = 2816, 2112, 16
    w = rng.standard_normal((n, k)).astype(np.float32) * 0.02
    q = quantize_nvfp4(w)
    x = rng.standard_normal((m, k)).astype(np.float32)
    wf = dequantize_nvfp4(q)
    t_deq = timeit(lambda: dequantize_nvfp4(q), a.runs)
    t_gemm = timeit(lambda: gemm_reference(x, dequantize_nvfp4(q)), a.runs)
    t_mm16 = timeit(lambda: x @ wf.T, a.runs)
    sq = rng.standard_normal((k, n)).astype(np.float32)
    t_mmsq = timeit(lambda: wf @ sq, max(3, a.runs // 5))
    print(f"shape {n} x {k} (N x K), M = {m}")
    print(f"dequantize NVFP4 -> fp32:               {t_deq * 1e3:8.2f} ms")
    print(f"reference GEMM (dequant + fp64 matmul): {t_gemm * 1e3:8.2f} ms")
    print(f"numpy fp32 matmul [{m}x{k}] @ [{k}x{n}]:   {t_mm16 * 1e3:8.2f} ms  (ratio dequant/mm {t_deq / t_mm16:.2f}, gemm/mm {t_gemm / t_mm16:.2f})")
    print(f"numpy fp32 matmul [{n}x{k}] @ [{k}x{n}]: {t_mmsq * 1e3:8.2f} ms  (ratio dequant/mm {t_deq / t_mmsq:.3f}, gemm/mm {t_gemm / t_mmsq:.3f})")


if __name__ == "__main__":
    main()
