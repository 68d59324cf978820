"""Sweep of the skinny-batch kernel's configs (kernels_ref/gpu/nvfp4_skinny.py, mma.sync fed from
registers: warps, 16-row tiles, K split, software pipeline), the search behind ``skinny_config``:
each config checked against float64 first, then timed beside cuBLAS bf16 and the MMA GEMM kernel
at M = 2..16 in the same run, under ``nvfp4tools bench``'s graph timing.

    python bench/tune_skinny.py [--json out.json] [--shapes 8192x2816,2816x8192] [--ms 16,8,2]
"""

from __future__ import annotations

import argparse
import json

import torch
from _gpu import graph_time_us, parse_configs, shape_args, shape_weights
from nvfp4tools.kernels_ref.gpu.nvfp4_gemm import _config, nvfp4_w4a16_gemm
from nvfp4tools.kernels_ref.gpu.nvfp4_skinny import nvfp4_w4a16_skinny, skinny_config

SWEEP = [(w, t, s, p) for w in (2, 4, 8) for t in (1, 2) for s in (1, 2, 3, 4) for p in (0, 1)]  # p: pipelined
SMALL_SWEEP = [(4, 1, s, p) for s in (1, 2, 3, 4) for p in (0, 1)]


def main() -> None:
    ap = argparse.ArgumentParser()
    shape_args(ap)
    ap.add_argument("--ms", default="16,8,2")
    ap.add_argument("--small-sweep", action="store_true", help="only (4 warps, 1 tile, split 1..4, with and without prefetch)")
    ap.add_argument("--configs", default=None, help="these configs only, e.g. '4,2,1,1;2,2,1,1'")
    a = ap.parse_args()
    rows = []
    print(f"device: {torch.cuda.get_device_name(0)}")
    print(f"{'N':>5} {'K':>5} {'M':>3} | {'bf16 us':>7} | {'mma us':>7} | {'skinny us':>9} {'config':>12} | "
          f"{'x bf16':>6} {'GB/s':>5} | {'rel err':>8} | best")
    for n, k, gw, qs, ws in shape_weights(a.shapes):
        qbytes = gw.nbytes
        g = gw.global_scale
        for m in (int(v) for v in a.ms.split(",")):
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            ref = x.double() @ gw.w.double().T
            t_b = graph_time_us([lambda wi=wi: torch.matmul(x, wi.T) for wi in ws])
            cfg = _config(m, n, k)
            t_mma = graph_time_us([lambda p=p, s=s: nvfp4_w4a16_gemm(x, p, s, g, config=cfg) for p, s in qs])
            res = {}
            errs = {}
            d = skinny_config(m, n, k)
            configs = parse_configs(a.configs) if a.configs else \
                SMALL_SWEEP if a.small_sweep else SWEEP
            for c in configs + [d]:
                y = nvfp4_w4a16_skinny(x, gw.packed, gw.scales, g, poison=True, config=c)
                errs[c] = float(((y.double() - ref).norm() / ref.norm()).item()) if torch.isfinite(y).all() \
                    else float("inf")
                res[c] = graph_time_us([lambda p=p, s=s: nvfp4_w4a16_skinny(x, p, s, g, config=c) for p, s in qs]) \
                    if errs[c] < 1e-5 else float("inf")
            best = min(res, key=res.get)
            print(f"{n:>5} {k:>5} {m:>3} | {t_b:7.1f} | {t_mma:7.1f} | {res[d]:9.1f} {d!s:>12} | {t_b / res[d]:5.2f}x "
                  f"{qbytes / res[d] / 1e3:5.0f} | {max(errs.values()):.2e} | {res[best]:.1f} us {best} "
                  f"= {t_b / res[best]:.2f}x")
            rows.append({"N": n, "K": k, "M": m, "bf16_us": t_b, "mma_us": t_mma, "default": list(d),
                         "skinny": [{"config": list(c), "us": t, "rel_err": errs[c]} for c, t in res.items()]})
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    main()
