"""A fused NVFP4 W4A16 GEMM in Triton: ``y = x @ W^T`` with W kept 4-bit in memory.

Layout (the checkpoint's own, nothing swizzled): ``packed`` uint8 [N, K/2] (element 2i in the low
nibble, ModelOpt / compressed-tensors order), ``scales`` uint8 E4M3 [N, K/16], one fp32 global.
Each program loads a [BLOCK_N, BLOCK_K/2] tile of codes and the matching [BLOCK_N, BLOCK_K/16]
scales, decodes E2M1 by bit arithmetic straight into bf16 bit patterns (no lookup table), multiplies
by the E4M3 block scale (exact in bf16: at most 5 significant bits), and feeds bf16 tensor-core
``tl.dot`` with fp32 accumulation; the global multiplies the fp32 result in the epilogue. Small M
(decode) is memory bound: the K loop is split across programs (``SPLIT_K``) so all SMs stream
weights, partial sums meet in an fp32 atomic add.
"""

from __future__ import annotations

import numpy as np
import torch
import triton
import triton.language as tl


@triton.jit
def _e2m1_to_bf16(c):
    """4-bit E2M1 codes (int32) -> bf16 values: sign, 2-bit exponent (bias 1), 1-bit mantissa."""
    sign = (c >> 3) & 1
    e = (c >> 1) & 3
    m = c & 1
    # normal: exponent e - 1 -> bf16 biased e + 126, mantissa bit -> bf16 bit 6; e == 0: 0 or 0.5
    normal = ((e + 126) << 7) | (m << 6)
    sub = tl.where(m == 1, 0x3F00, 0)
    bits = tl.where(e == 0, sub, normal) | (sign << 15)
    return bits.to(tl.int16).to(tl.bfloat16, bitcast=True)


@triton.jit
def _nvfp4_w4a16_kernel(x_ptr, w_ptr, s_ptr, y_ptr, M, N, K, g,
                        stride_xm, stride_wn, stride_sn, stride_ym,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                        SPLIT_K: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_m = tl.program_id(1)
    pid_k = tl.program_id(2)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_kh = tl.arange(0, BLOCK_K // 2)        # packed bytes
    offs_ks = tl.arange(0, BLOCK_K // 16)       # block scales
    offs_k = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    k_iters = tl.cdiv(K, BLOCK_K * SPLIT_K)
    for i in range(0, k_iters):
        k0 = (pid_k * k_iters + i) * BLOCK_K
        kmask = (k0 + offs_k) < K
        x = tl.load(x_ptr + offs_m[:, None] * stride_xm + (k0 + offs_k)[None, :],
                    mask=(offs_m[:, None] < M) & kmask[None, :], other=0.0)
        wb = tl.load(w_ptr + offs_n[:, None] * stride_wn + (k0 // 2 + offs_kh)[None, :],
                     mask=(offs_n[:, None] < N) & ((k0 // 2 + offs_kh)[None, :] < K // 2), other=0).to(tl.int32)
        lo = _e2m1_to_bf16(wb & 0xF)
        hi = _e2m1_to_bf16((wb >> 4) & 0xF)
        w = tl.reshape(tl.join(lo, hi), (BLOCK_N, BLOCK_K))          # element 2i low, 2i+1 high
        sb = tl.load(s_ptr + offs_n[:, None] * stride_sn + (k0 // 16 + offs_ks)[None, :],
                     mask=(offs_n[:, None] < N) & ((k0 // 16 + offs_ks)[None, :] < K // 16), other=0)
        s = sb.to(tl.float8e4nv, bitcast=True).to(tl.bfloat16)
        w = tl.reshape(tl.reshape(w, (BLOCK_N, BLOCK_K // 16, 16)) * tl.reshape(s, (BLOCK_N, BLOCK_K // 16, 1)),
                       (BLOCK_N, BLOCK_K))
        acc = tl.dot(x, tl.trans(w), acc)
    acc = acc * g
    y_ptrs = y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :]
    ymask = (offs_m[:, None] < M) & (offs_n[None, :] < N)
    if SPLIT_K == 1:
        tl.store(y_ptrs, acc, mask=ymask)
    else:
        tl.atomic_add(y_ptrs, acc, mask=ymask)


def _config(m: int, n: int, k: int) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_K, SPLIT_K): enough programs to cover the SMs at small M."""
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    bm = 16 if m <= 16 else (32 if m <= 32 else 64)
    bn = 64 if m <= 32 else 128
    bk = 256 if m <= 32 else 128
    tiles = triton.cdiv(n, bn) * triton.cdiv(m, bm)
    split = 1
    while tiles * split < 2 * sms and split < 16 and k // (bk * split * 2) >= 1:
        split *= 2
    return bm, bn, bk, split


def nvfp4_w4a16_gemm(x: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor, global_scale: float,
                     poison: bool = False, config: tuple[int, int, int, int] | None = None) -> torch.Tensor:
    """x bf16 [M, K]; packed uint8 [N, K/2]; scales uint8 [N, K/16] -> y float32 [M, N]."""
    m, k = x.shape
    n = packed.shape[0]
    assert packed.shape[1] * 2 == k and scales.shape[1] * 16 == k, "shapes do not match"
    bm, bn, bk, split = config or _config(m, n, k)
    if split > 1:
        y = torch.zeros((m, n), dtype=torch.float32, device=x.device)
    else:
        y = torch.full((m, n), float("nan"), dtype=torch.float32, device=x.device) if poison else \
            torch.empty((m, n), dtype=torch.float32, device=x.device)
    if poison and split > 1:
        y.fill_(float("nan"))
        y.zero_()  # atomics need a zeroed output; NaN poisoning is checked in the split == 1 path
    grid = (triton.cdiv(n, bn), triton.cdiv(m, bm), split)
    _nvfp4_w4a16_kernel[grid](x, packed, scales, y, m, n, k, float(global_scale),
                              x.stride(0), packed.stride(0), scales.stride(0), y.stride(0),
                              BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, SPLIT_K=split, num_warps=4, num_stages=3)
    return y


def pack_for_kernel(codes: np.ndarray, scale_bytes: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    from nvfp4tools.kernels_ref.fp4 import pack_nibbles_hf

    # np.array copies: the inputs may be read-only memory maps, which torch refuses to wrap
    packed = torch.from_numpy(np.array(pack_nibbles_hf(codes), dtype=np.uint8)).cuda()
    scales = torch.from_numpy(np.array(scale_bytes, dtype=np.uint8)).cuda()
    return packed, scales
