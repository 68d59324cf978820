"""Sweep of the diagonal-MMA GEMV's configs (kernels_ref/gpu/nvfp4_skinny.py: M = 1 on mma.sync,
each quad's K range on the diagonal), the search behind ``diag_config`` (which layers take it):
each config checked against float64 first, then timed beside the CUDA-core GEMV (nvfp4_gemv.py)
and cuBLAS bf16 in the same run, under ``nvfp4tools bench``'s graph timing.

    python bench/tune_diag_gemv.py [--shapes 8192x2816,2816x8192] [--configs "1,1,0;2,2,1"] [--json F]
"""

from __future__ import annotations

import argparse
import json

import torch
from _gpu import graph_time_us, parse_configs, shape_args, shape_weights
from nvfp4tools.kernels_ref.gpu.nvfp4_gemv import gemv_config, nvfp4_w4a16_gemv
from nvfp4tools.kernels_ref.gpu.nvfp4_skinny import nvfp4_w4a16_gemv_mma


def main() -> None:
    ap = argparse.ArgumentParser()
    shape_args(ap)
    ap.add_argument("--configs", default="1,1,0;1,2,0;2,1,0;2,2,0;4,1,0;4,2,0;1,1,1;1,2,1;2,1,1;2,2,1",
                    help="warps,row pairs,prefetch;...")
    a = ap.parse_args()
    configs = parse_configs(a.configs)
    rows = []
    print(f"device: {torch.cuda.get_device_name(0)}")
    print(f"{'N':>5} {'K':>5} | {'bf16 us':>7} | {'gemv us':>7} | " + " | ".join(f"mma {c}" for c in configs))
    for n, k, gw, qs, ws in shape_weights(a.shapes):
        x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
        ref = x.double() @ gw.w.double().T
        g = gw.global_scale
        t_b = graph_time_us([lambda wi=wi: torch.matmul(x, wi.T) for wi in ws])
        gc = gemv_config(n, k)
        t_v = graph_time_us([lambda p=p, s=s: nvfp4_w4a16_gemv(x, p, s, g, config=gc) for p, s in qs])
        res = []
        for c in configs:
            y = nvfp4_w4a16_gemv_mma(x, gw.packed, gw.scales, g, poison=True, config=c)
            err = float(((y.double() - ref).norm() / ref.norm()).item()) if torch.isfinite(y).all() else float("inf")
            t = graph_time_us([lambda p=p, s=s, c=c: nvfp4_w4a16_gemv_mma(x, p, s, g, config=c) for p, s in qs]) \
                if err < 1e-5 else float("inf")
            res.append({"config": list(c), "us": t, "rel_err": err})
        print(f"{n:>5} {k:>5} | {t_b:7.1f} | {t_v:7.1f} | "
              + " | ".join(f"{r['us']:5.1f} ({t_b / r['us']:.2f}x, {r['rel_err']:.0e})" for r in res))
        rows.append({"N": n, "K": k, "bf16_us": t_b, "gemv_us": t_v, "gemv_config": list(gc), "mma": res})
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    main()
