"""Where does the NVFP4 GEMV time go? The kernel's own loop with parts switched off, on the same
tiles and grid: LOADS only (weight words and scale bytes, xor-reduced so nothing is optimised
away), LOADS + DECODE (the PTX word decode, summed without the MMA), and the full kernel; beside
a plain copy of the same bytes (torch) and cuBLAS bf16; then the same loads through TMA tensor
descriptors. 8192x2816 and 2816x8192, M = 1.

    python bench/gpu_probe.py
"""

from __future__ import annotations

import numpy as np
import torch
import triton
import triton.language as tl
from nvfp4tools.kernels_ref.gpu import nvfp4_gemm as K


@triton.jit
def _k_blocks(K2, SPLIT_K, BLOCK_K: tl.constexpr):
    """This program's K blocks [start, end) (whole blocks, as the kernel splits them)."""
    n_blocks = tl.cdiv(K2 * 2, BLOCK_K)
    per = tl.cdiv(n_blocks, SPLIT_K)
    start = tl.program_id(2) * per
    return start, tl.minimum(start + per, n_blocks)


@triton.jit
def _consume(wq, sb, acc_i, acc_f, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, MODE: tl.constexpr):
    """MODE 0: xor the loaded words and scales into acc_i (keeps the loads alive, nothing else);
    MODE 1: the kernel's PTX word decode, summed in fp32 (no MMA)."""
    if MODE == 0:
        acc_i ^= wq ^ tl.reshape(tl.join(sb.to(tl.int32), sb.to(tl.int32)), (BLOCK_N, BLOCK_K // 8))
    else:
        acc_f += K.decode_words(wq, sb, BLOCK_N, BLOCK_K).to(tl.float32)
    return acc_i, acc_f


@triton.jit
def _finish(acc_i, acc_f, o_ptr, N, BLOCK_N: tl.constexpr, MODE: tl.constexpr):
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    if MODE == 0:
        r = tl.sum(acc_i, axis=1).to(tl.float32)
    else:
        r = tl.sum(acc_f, axis=1)
    tl.atomic_add(o_ptr + offs_n, r, mask=offs_n < N)


@triton.jit
def _probe(w_ptr, s_ptr, o_ptr, N, K2, KS, stride_wn, stride_sn, SPLIT_K,
           BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, MODE: tl.constexpr):
    """The kernel's own loads (pointer tiles through registers), LOADS only or LOADS + DECODE."""
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_kw = tl.arange(0, BLOCK_K // 8)
    offs_ks = tl.arange(0, BLOCK_K // 16)
    start, end = _k_blocks(K2, SPLIT_K, BLOCK_K)
    nmask = offs_n[:, None] < N
    acc_i = tl.zeros((BLOCK_N, BLOCK_K // 8), dtype=tl.int32)
    acc_f = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    for blk in range(start, end):
        k0 = blk * BLOCK_K
        sb = tl.load(s_ptr + offs_n[:, None] * stride_sn + (k0 // 16 + offs_ks)[None, :], mask=nmask, other=0)
        wq = tl.load(w_ptr + offs_n[:, None] * stride_wn + (k0 // 8 + offs_kw)[None, :], mask=nmask, other=0)
        acc_i, acc_f = _consume(wq, sb, acc_i, acc_f, BLOCK_N, BLOCK_K, MODE)
    _finish(acc_i, acc_f, o_ptr, N, BLOCK_N, MODE)


@triton.jit
def _probe_tma(w_desc, s_desc, o_ptr, N, K2, SPLIT_K,
               BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, MODE: tl.constexpr, STAGES: tl.constexpr):
    """The same loads through TMA tensor descriptors (bulk async copies into shared memory,
    pipelined with mbarriers by Triton), LOADS only or LOADS + DECODE."""
    row = tl.program_id(0) * BLOCK_N
    start, end = _k_blocks(K2, SPLIT_K, BLOCK_K)
    acc_i = tl.zeros((BLOCK_N, BLOCK_K // 8), dtype=tl.int32)
    acc_f = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    for blk in tl.range(start, end, num_stages=STAGES):
        wq = w_desc.load([row, blk * (BLOCK_K // 8)])
        sb = s_desc.load([row, blk * (BLOCK_K // 16)])
        acc_i, acc_f = _consume(wq, sb, acc_i, acc_f, BLOCK_N, BLOCK_K, MODE)
    _finish(acc_i, acc_f, o_ptr, N, BLOCK_N, MODE)


def bench(fn) -> float:
    return triton.testing.do_bench(fn, warmup=20, rep=100, return_mode="median") * 1e3


def main() -> None:
    print(f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, triton {triton.__version__}")
    rng = np.random.default_rng(0)
    # unreported warm-up: the first kernel timed in a fresh process reads up to 2x slow
    gw = K.random_weight(1024, 2816, rng)
    xw = torch.randn(1, 2816, device="cuda", dtype=torch.bfloat16)
    bench(lambda: K.nvfp4_w4a16_gemm(xw, gw.packed, gw.scales, gw.global_scale))
    for n, k in ((8192, 2816), (2816, 8192)):
        gw = K.random_weight(n, k, rng)
        x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
        wb = gw.w.to(torch.bfloat16)
        w32 = gw.packed.view(torch.int32)
        o = torch.zeros(n, device="cuda")
        buf = torch.empty(gw.nbytes, dtype=torch.uint8, device="cuda")
        src = torch.cat([gw.packed.view(-1), gw.scales.view(-1)])
        print(f"\n{n}x{k} M=1 ({gw.nbytes / 1e6:.1f} MB NVFP4): bf16 {bench(lambda: torch.matmul(x, wb.T)):.1f} us, "
              f"copy of the same bytes {bench(lambda: buf.copy_(src)):.1f} us, "
              f"kernel {bench(lambda: K.nvfp4_w4a16_gemm(x, gw.packed, gw.scales, gw.global_scale)):.1f} us")
        for mode, label in ((0, "loads only"), (1, "loads + decode")):
            for bn, bk, split, warps, stages in ((64, 256, 1, 4, 3), (64, 256, 2, 4, 3), (64, 256, 4, 4, 3),
                                                 (128, 256, 2, 4, 3), (64, 512, 2, 8, 3), (32, 256, 4, 4, 4)):
                grid = (triton.cdiv(n, bn), 1, split)
                t = bench(lambda: _probe[grid](w32, gw.scales, o, n, k // 2, k // 16, w32.stride(0),
                                               gw.scales.stride(0), split, BLOCK_N=bn, BLOCK_K=bk, MODE=mode,
                                               num_warps=warps, num_stages=stages))
                print(f"  {label:15s} {t:6.1f} us {gw.nbytes / t / 1e3:6.0f} GB/s  (BN {bn}, BK {bk}, split {split}, "
                      f"warps {warps}, stages {stages})")
        from triton.tools.tensor_descriptor import TensorDescriptor
        for mode, label in ((0, "TMA loads only"), (1, "TMA loads+decode")):
            for bn, bk, split, warps, stages in ((64, 256, 1, 4, 3), (64, 256, 2, 4, 4), (64, 256, 4, 4, 4),
                                                 (128, 256, 2, 4, 4), (64, 512, 2, 8, 4), (32, 256, 4, 4, 6),
                                                 (64, 256, 3, 4, 6), (128, 512, 1, 8, 3)):
                try:
                    wd = TensorDescriptor.from_tensor(w32, [bn, bk // 8])
                    sd = TensorDescriptor.from_tensor(gw.scales, [bn, bk // 16])
                    grid = (triton.cdiv(n, bn), 1, split)
                    t = bench(lambda: _probe_tma[grid](wd, sd, o, n, k // 2, split, BLOCK_N=bn, BLOCK_K=bk, MODE=mode,
                                                       STAGES=stages, num_warps=warps))
                    print(f"  {label:16s} {t:6.1f} us {gw.nbytes / t / 1e3:6.0f} GB/s  (BN {bn}, BK {bk}, split {split}, "
                          f"warps {warps}, stages {stages})")
                except Exception as e:  # noqa: BLE001
                    print(f"  {label} (BN {bn}, BK {bk}) failed: {str(e).splitlines()[0][:120]}")


if __name__ == "__main__":
    main()
