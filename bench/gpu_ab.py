"""A/B of the Triton kernel's E2M1 decode (bit arithmetic vs 256-entry pair table) and launch
shapes on the two largest Gemma-4 shapes, M = 1, 16, 128; checks each against the reference."""

from __future__ import annotations

import itertools

import numpy as np
import torch
import triton

from nvfp4tools.kernels_ref.fp4 import unpack_nibbles_hf
from nvfp4tools.kernels_ref.gpu.nvfp4_gemm import nvfp4_w4a16_gemm, pack_for_kernel
from nvfp4tools.kernels_ref.nvfp4 import dequantize_nvfp4, quantize_nvfp4

rng = np.random.default_rng(0)
for n, k in ((8192, 2816), (2816, 8192)):
    q = quantize_nvfp4(rng.standard_normal((n, k)).astype(np.float32) * 0.02)
    packed, scales = pack_for_kernel(unpack_nibbles_hf(q.packed), q.block_scale)
    w = torch.from_numpy(dequantize_nvfp4(q)).cuda()
    wb = w.to(torch.bfloat16)
    g = float(q.global_scale)
    for m in (1, 16, 128):
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        ref = x.float() @ w.T
        t_bf16 = triton.testing.do_bench(lambda: x @ wb.T, return_mode="median")
        best = {}
        for variant, bn, bk, sp, nw, ns in itertools.product(("bits", "lut"), (32, 64, 128), (128, 256, 512),
                                                               (1, 2, 4, 8), (4, 8), (3, 4)):
            bm = 16 if m <= 16 else 64
            if bk * sp > k or (m > 16 and bn < 64):
                continue
            cfg = (bm, bn, bk, sp)
            try:
                y = nvfp4_w4a16_gemm(x, packed, scales, g, config=cfg, variant=variant, num_warps=nw, num_stages=ns)
                err = float((y - ref).norm() / ref.norm())
                if not err < 5e-3:
                    continue
                t = triton.testing.do_bench(lambda: nvfp4_w4a16_gemm(x, packed, scales, g, config=cfg, variant=variant,
                                                                     num_warps=nw, num_stages=ns),
                                            warmup=10, rep=50, return_mode="median")
            except Exception:
                continue
            if variant not in best or t < best[variant][0]:
                best[variant] = (t, cfg, nw, ns, err)
        for variant, (t, cfg, nw, ns, err) in best.items():
            print(f"{n}x{k} M={m:<3} {variant:<4} {t * 1e3:7.1f} us  bf16 {t_bf16 * 1e3:6.1f} us  "
                  f"{t_bf16 / t:5.2f}x  cfg {cfg} warps {nw} stages {ns} err {err:.1e}", flush=True)
