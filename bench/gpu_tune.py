"""Search the Triton NVFP4 W4A16 kernel's structure and tiles on the local GPU (the figures behind
the defaults in kernels_ref/gpu/nvfp4_gemm.py). Phase 1 sweeps decode (plain Triton / PTX) x
tiles x split-K; phase 2 varies warps, pipeline stages and BLOCK_K around the three best. Every
config is checked against a float64 reference (relative error < 5e-3) before it is timed.
Timing: triton.testing.do_bench (L2 flushed before each run, median).

    python bench/gpu_tune.py [--shapes 8192x2816,2816x8192] [--json out.json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import time

import numpy as np
import torch
import triton
from nvfp4tools.kernels_ref.gpu import nvfp4_gemm as K


def bench(fn, rep=40) -> float:
    return triton.testing.do_bench(fn, warmup=10, rep=rep, return_mode="median") * 1e3


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default="8192x2816,2816x8192")
    ap.add_argument("--ms", default="1,16,128")
    ap.add_argument("--json", default=None)
    ap.add_argument("--deep-pipeline", action="store_true",
                    help="M <= 16 only: the PTX decode with deeper pipelines (stages 3-6) and wider tiles")
    a = ap.parse_args()
    t_start = time.time()
    torch.backends.cuda.matmul.allow_tf32 = False
    print(f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, triton {triton.__version__}")
    decs = (0, 2)  # every config is checked against the reference below
    rng = np.random.default_rng(0)
    out = []
    for shape in a.shapes.split(","):
        n, k = map(int, shape.split("x"))
        gw = K.random_weight(n, k, rng)
        packed, scales, g, wbytes, w32 = gw.packed, gw.scales, gw.global_scale, gw.nbytes, gw.w
        w_bf16 = w32.to(torch.bfloat16)
        for m in map(int, a.ms.split(",")):
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            ref = x.double() @ w32.double().T
            t_bf16 = bench(lambda: torch.matmul(x, w_bf16.T))
            t_zeros = bench(lambda: torch.zeros((m, n), dtype=torch.float32, device="cuda"))

            def run(cfg):
                try:
                    y = K.nvfp4_w4a16_gemm(x, packed, scales, g, config=cfg)
                    err = float((y.double() - ref).norm() / ref.norm())
                    if not err < 5e-3:
                        return None, err
                    return bench(lambda: K.nvfp4_w4a16_gemm(x, packed, scales, g, config=cfg)), err
                except Exception as e:  # noqa: BLE001 - a config the compiler refuses is just skipped
                    return None, f"{type(e).__name__}: {str(e).splitlines()[0][:80]}"

            res = []
            if m <= 16 and a.deep_pipeline:
                space = list(itertools.product((16,), (64, 128), (128, 256, 512), (1, 2, 4), (4, 8), (3, 4, 5, 6),
                                               (2,), (1,)))
            elif m <= 16:
                space = list(itertools.product((1, 16) if m == 1 else (16,), (32, 64, 128), (128, 256, 512),
                                               (1, 2, 4), (4,), (3, 4), decs, (1,)))
            else:
                space = list(itertools.product((128,), (64, 128), (64, 128), (1, 2), (4, 8), (3,), (0, 2), (1, 0)))
            for cfg in space:
                if cfg[2] * cfg[3] > k or (cfg[0] == 1 and cfg[1] > 64):
                    continue
                t, err = run(cfg)
                res.append((t, cfg, err))
            # phase 2: around the three best, other warps / stages / BLOCK_K
            top = sorted([r for r in res if r[0] is not None], key=lambda r: r[0])[:3]
            seen = {r[1] for r in res}
            for _, c, _ in top:
                for wp, st, bk in itertools.product((4, 8), (2, 3, 4, 5), (64, 128, 256, 512)):
                    cfg = (c[0], c[1], bk, c[3], wp, st, c[6], c[7])
                    if cfg in seen or bk * c[3] > k or (m > 16 and bk > 128):
                        continue
                    seen.add(cfg)
                    t, err = run(cfg)
                    res.append((t, cfg, err))
            ok = sorted([r for r in res if r[0] is not None], key=lambda r: r[0])
            fails = [r for r in res if r[0] is None]
            print(f"\n{n}x{k} M={m}: bf16 {t_bf16:.1f} us; {len(ok)} configs ran, {len(fails)} refused/failed "
                  f"[{time.time() - t_start:.0f} s]; torch.zeros of the output alone {t_zeros:.1f} us")
            for t, cfg, err in ok[:5]:
                print(f"  {t:7.1f} us  {t_bf16 / t:5.2f}x bf16  {wbytes / t / 1e3:6.0f} GB/s  err {err:.2e}  {cfg}")
            for key in sorted({(c[0] == 1, c[6], c[7]) for _, c, _ in ok}):
                best = [r for r in ok if (r[1][0] == 1, r[1][6], r[1][7]) == key]
                print(f"  best fma={key[0]:d} decode={key[1]} swap={key[2]}: {best[0][0]:.1f} us {best[0][1]}")
            for r in fails[:3]:
                print("  failed:", r[1], r[2])
            out.append({"N": n, "K": k, "M": m, "bf16_us": t_bf16,
                        "results": [{"us": t, "config": list(c), "rel_err": e} for t, c, e in ok[:20]]})
    print(f"total {time.time() - t_start:.0f} s")
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(out, fh, indent=1)


if __name__ == "__main__":
    main()
