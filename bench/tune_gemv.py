"""Sweep of the M = 1 GEMV kernel's configs (kernels_ref/gpu/nvfp4_gemv.py: ROWS, num_warps,
CACHE), the search behind ``gemv_config``: each config checked against the float64 product first,
then timed beside cuBLAS bf16 and the MMA GEMM kernel at M = 1 in the same run, under ``nvfp4tools
bench``'s graph timing (every call reads a different copy of the weight, calls replayed from one
CUDA graph). Prints the best config and the default per shape.

    python bench/tune_gemv.py [--json out.json] [--shapes 8192x2816,2816x8192] [--no-sweep]
"""

from __future__ import annotations

import argparse
import json

import torch
from _gpu import graph_time_us, parse_configs, shape_args, shape_weights
from nvfp4tools.kernels_ref.gpu.nvfp4_gemm import _config, nvfp4_w4a16_gemm
from nvfp4tools.kernels_ref.gpu.nvfp4_gemv import gemv_config, nvfp4_w4a16_gemv

SWEEP = [(r, w, c) for r in (1, 2, 4) for w in (1, 2, 4) for c in (0, 1, 2)]


def main() -> None:
    ap = argparse.ArgumentParser()
    shape_args(ap)
    ap.add_argument("--no-sweep", action="store_true")
    ap.add_argument("--configs", default=None, help="R,W,C;... instead of the sweep")
    a = ap.parse_args()
    rows = []
    print(f"device: {torch.cuda.get_device_name(0)}")
    print(f"{'N':>5} {'K':>5} | {'bf16 us':>7} | {'gemm us':>7} | {'gemv us':>7} {'config':>14} | {'x bf16':>6} "
          f"{'GB/s':>5} | {'rel err':>8}")
    for n, k, gw, qs, ws in shape_weights(a.shapes):
        qbytes = gw.nbytes
        x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
        ref = (x.double() @ gw.w.double().T)
        g = gw.global_scale
        t_b = graph_time_us([lambda wi=wi: torch.matmul(x, wi.T) for wi in ws])
        gcfg = _config(1, n, k)
        t_gemm = graph_time_us([lambda p=p, s=s: nvfp4_w4a16_gemm(x, p, s, g, config=gcfg) for p, s in qs])
        results = []
        sweep = parse_configs(a.configs) if a.configs else SWEEP
        for cfg in (sweep if not a.no_sweep else []) + [gemv_config(n, k)]:
            y = nvfp4_w4a16_gemv(x, gw.packed, gw.scales, g, poison=True, config=cfg)
            err = float(((y.double() - ref).norm() / ref.norm()).item())
            ok = bool(torch.isfinite(y).all()) and err < 5e-3
            t = graph_time_us([lambda p=p, s=s: nvfp4_w4a16_gemv(x, p, s, g, config=cfg) for p, s in qs]) if ok \
                else float("inf")
            results.append({"config": list(cfg), "us": t, "rel_err": err, "ok": ok})
        best = min(results, key=lambda r: r["us"])
        default = results[-1]
        for tag, r in (("best", best), ("default", default)):
            print(f"{n:>5} {k:>5} | {t_b:7.1f} | {t_gemm:7.1f} | {r['us']:7.1f} {tuple(r['config'])!s:>14} | "
                  f"{t_b / r['us']:5.2f}x {qbytes / r['us'] / 1e3:5.0f} | {r['rel_err']:.2e} {tag}")
        bad = [r for r in results if not r["ok"]]
        if bad:
            print(f"  FAILED configs: {[(tuple(r['config']), r['rel_err']) for r in bad]}")
        rows.append({"N": n, "K": k, "bf16_us": t_b, "gemm_m1_us": t_gemm, "gemm_config": list(gcfg),
                     "gemv": results})
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    main()
