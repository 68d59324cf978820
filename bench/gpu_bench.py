"""GPU timing: for each full-size Gemma-4-26B-A4B linear shape, the Triton NVFP4 W4A16 kernel and
torch dequantize+matmul against cuBLAS bf16 at M = 1, 16, 128 (CUDA-event timing via
triton.testing.do_bench, median). Effective bandwidth = NVFP4 weight bytes / time; the
memory-roofline speedup limit over bf16 is 2 / 0.5625 = 3.56x.

    python bench/gpu_bench.py [--json out.json]

The kernel and its config come from nvfp4_gemm.default_config: the GEMV kernel at M = 1
(bench/gpu_gemv.py is its sweep), the MMA kernel's tiles otherwise (bench/gpu_tune.py).
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
import triton
from nvfp4tools.kernels_ref.gpu.nvfp4_gemm import default_config, nvfp4_w4a16_gemm, random_weight

SHAPES = [(8192, 2816), (2816, 8192), (2816, 4096), (4096, 2816), (2816, 2112), (2112, 2816), (704, 2816), (2816, 704)]
MS = (1, 16, 128)


def bench(fn) -> float:
    return triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    rng = np.random.default_rng(0)
    print(f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, triton {triton.__version__}")
    print(f"{'N':>5} {'K':>5} {'M':>4} | {'bf16 us':>8} {'triton us':>9} {'x bf16':>7} {'GB/s':>6} | "
          f"{'torch-deq us':>12} | {'rel err':>8} | config")
    rows = []
    # an unreported first round: the first shape timed in a fresh process came out up to 2x slow
    # (allocator and launcher warm-up), which no later shape showed
    gw = random_weight(*SHAPES[0], rng)
    xw = torch.randn(16, SHAPES[0][1], device="cuda", dtype=torch.bfloat16)
    bench(lambda: nvfp4_w4a16_gemm(xw, gw.packed, gw.scales, gw.global_scale))
    bench(lambda: torch.matmul(xw, gw.w.to(torch.bfloat16).T))
    rng = np.random.default_rng(0)
    for n, k in SHAPES:
        gw = random_weight(n, k, rng)
        packed, scales, g, wbytes = gw.packed, gw.scales, gw.global_scale, gw.nbytes
        w_bf16 = gw.w.to(torch.bfloat16)
        for m in MS:
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            t_bf16 = bench(lambda: torch.matmul(x, w_bf16.T))
            cfg = default_config(m, n, k)
            y = nvfp4_w4a16_gemm(x, packed, scales, g)
            ref = x.double() @ w_bf16.double().T
            err = float((y.double() - ref).norm() / ref.norm())
            t_tri = bench(lambda: nvfp4_w4a16_gemm(x, packed, scales, g))
            lut = torch.tensor([0, .5, 1, 1.5, 2, 3, 4, 6, -0., -.5, -1, -1.5, -2, -3, -4, -6], device="cuda")
            codes = torch.stack([packed & 15, packed >> 4], -1).view(n, k).long()
            sb = scales.view(torch.float8_e4m3fn)

            def deq_mm():
                wf = (lut[codes].view(n, -1, 16) * sb.float().unsqueeze(-1)).view(n, k) * g
                return torch.matmul(x, wf.to(torch.bfloat16).T)
            t_deq = bench(deq_mm)
            row = {"N": n, "K": k, "M": m, "bf16_us": t_bf16 * 1e3, "triton_us": t_tri * 1e3,
                   "speedup_vs_bf16": t_bf16 / t_tri, "triton_GBps": wbytes / (t_tri * 1e-3) / 1e9,
                   "torch_dequant_us": t_deq * 1e3, "rel_err": err, "config": list(cfg)}
            rows.append(row)
            print(f"{n:>5} {k:>5} {m:>4} | {row['bf16_us']:8.1f} {row['triton_us']:9.1f} {row['speedup_vs_bf16']:6.2f}x "
                  f"{row['triton_GBps']:6.0f} | {row['torch_dequant_us']:12.1f} | {err:8.1e} | {cfg}")
    print("memory-roofline limit of NVFP4 over bf16: 2 / 0.5625 = 3.56x")
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    main()
