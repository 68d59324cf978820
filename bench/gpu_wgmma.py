"""The experimental Gluon warpgroup-MMA kernel (bench/wgmma_gluon.py, not part of the package)
against cuBLAS bf16 and the default Triton path (nvfp4_w4a16_gemm: the skinny mma.sync kernel at
these M), engine-like timing, each config checked against float64 first. Session 9 in
bench/RESULTS.md.

    python bench/gpu_wgmma.py [--shapes 8192x2816,2816x8192] [--ms 16,8] [--configs '6,16,1,1,64;6,16,1,1,64,1;...']
"""

from __future__ import annotations

import argparse

import torch
from gpu_stream_bench import graph_time_us, parse_configs, shape_args, shape_weights
from nvfp4tools.kernels_ref.gpu.nvfp4_gemm import nvfp4_w4a16_gemm
from wgmma_gluon import nvfp4_w4a16_wgmma

# (K split, NPAD, async halves, prefetch passes, rows per program[, 1 = cp.async every pass up front])
SWEEP = [(s, 16, 1, 1, bn) for s in (4, 6, 8, 11, 16) for bn in (64, 128)]


def main() -> None:
    ap = argparse.ArgumentParser()
    shape_args(ap)
    ap.add_argument("--ms", default="16,8")
    ap.add_argument("--configs", default=None, help="(split, npad, async, prefetch, rows[, cp.async all passes]) e.g. '6,16,1,1,64;11,16,1,1,64,1'")
    a = ap.parse_args()
    print(f"device: {torch.cuda.get_device_name(0)}")
    for n, k, gw, qs, ws in shape_weights(a.shapes):
        g = gw.global_scale
        for m in (int(v) for v in a.ms.split(",")):
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            ref = x.double() @ gw.w.double().T
            t_b = graph_time_us([lambda wi=wi: torch.matmul(x, wi.T) for wi in ws])
            t_d = graph_time_us([lambda p=p, s=s: nvfp4_w4a16_gemm(x, p, s, g) for p, s in qs])
            print(f"{n}x{k} M={m}: bf16 {t_b:.1f} us, default triton {t_d:.1f} us ({t_b / t_d:.2f}x)", flush=True)
            configs = parse_configs(a.configs) if a.configs else SWEEP
            for c in configs:
                if c[1] < m:
                    continue
                try:
                    y = nvfp4_w4a16_wgmma(x, gw.packed, gw.scales, g, config=c)
                    torch.cuda.synchronize()
                except Exception as e:  # noqa: BLE001 (a sweep: report and go on)
                    print(f"  {c}: failed: {type(e).__name__}: {str(e)[:300]}", flush=True)
                    continue
                err = float(((y.double() - ref).norm() / ref.norm()).item()) if torch.isfinite(y).all() else float("inf")
                t = graph_time_us([lambda p=p, s=s: nvfp4_w4a16_wgmma(x, p, s, g, config=c) for p, s in qs]) \
                    if err < 1e-5 else float("nan")
                print(f"  {c}: {t:6.1f} us = {t_b / t:.2f}x bf16   rel err {err:.2e}", flush=True)


if __name__ == "__main__":
    main()
