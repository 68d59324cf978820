"""Split-K with a workspace fix-up (no zeroed output) against split-K with atomics into a zeroed
output and against no split, at M = 1 and 16 on the two largest Gemma-4-26B shapes. Every config
is checked against float64 first; triton.testing.do_bench (L2 flushed, median).

    python bench/gpu_splitk.py [--shapes 8192x2816,2816x8192] [--ms 1,16]
"""

from __future__ import annotations

import argparse
import itertools

import numpy as np
import torch
import triton
from nvfp4tools.kernels_ref.gpu import nvfp4_gemm as K


def bench(fn) -> float:
    return triton.testing.do_bench(fn, warmup=20, rep=100, return_mode="median") * 1e3


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default="8192x2816,2816x8192")
    ap.add_argument("--ms", default="1,16")
    a = ap.parse_args()
    print(f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, triton {triton.__version__}")
    rng = np.random.default_rng(0)
    for n, k in (tuple(map(int, sh.split("x"))) for sh in a.shapes.split(",")):
        gw = K.random_weight(n, k, rng)
        wb = gw.w.to(torch.bfloat16)
        for m in map(int, a.ms.split(",")):
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            ref = x.double() @ gw.w.double().T
            t_bf16 = bench(lambda: torch.matmul(x, wb.T))
            res = []
            if m > 16:
                space = [(True, 128) + c for c in itertools.product((64, 128), (64, 128), (1, 2, 3, 4, 6), (4, 8), (3, 4))]
            else:
                space = [(True, 16) + c for c in itertools.product((64, 128), (64, 128, 256), (1, 2, 3, 4, 6, 8), (4, 8),
                                                                   (3, 4))]
                space += [(False, 16, 64, 256, sp, 4, 3) for sp in (2, 4, 8)]
            for fix, bm, bn, bk, split, warps, stages in space:
                if bk * split > k or (split == 1 and not fix) or (bm == 16 and bn == 128 and bk == 64):
                    continue
                K.SPLIT_K_FIXUP = fix
                cfg = (bm, bn, bk, split, warps, stages, 2, 0 if m > 16 else 1)
                try:
                    for _ in range(3):  # counters must come back to zero between launches
                        y = K.nvfp4_w4a16_gemm(x, gw.packed, gw.scales, gw.global_scale, config=cfg, poison=True)
                        err = float((y.double() - ref).norm() / ref.norm())
                        if not err < 5e-3:
                            raise RuntimeError(f"rel err {err}")
                    t = bench(lambda: K.nvfp4_w4a16_gemm(x, gw.packed, gw.scales, gw.global_scale, config=cfg))
                    res.append((t, fix, cfg))
                except Exception as e:  # noqa: BLE001
                    print("  failed", fix, cfg, str(e).splitlines()[0][:100])
            K.SPLIT_K_FIXUP = True
            res.sort()
            print(f"\n{n}x{k} M={m}: bf16 {t_bf16:.1f} us, default {K.default_config(m, n, k)}")
            for t, fix, cfg in res[:6]:
                print(f"  {t:6.1f} us {t_bf16 / t:5.2f}x  fixup={fix:d} {cfg}")
            for bm in (16, 128):
                for fix in (True, False):
                    for split in (1, 2, 4, 8):
                        b = [r for r in res if r[1] == fix and r[2][3] == split and r[2][0] == bm]
                        if b:
                            print(f"  best BLOCK_M={bm} fixup={fix:d} split={split}: {b[0][0]:.1f} us {b[0][2]}")


if __name__ == "__main__":
    main()
