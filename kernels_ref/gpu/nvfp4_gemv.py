"""NVFP4 W4A16 GEMV (M = 1, decode) in Triton: ``y = W x`` with W read once, 4-bit, in the
checkpoint's own layout (``packed`` uint8 [N, K/2], element 2i in the low nibble; ``scales`` E4M3
[N, K/16]); nothing is repacked.

At M = 1 the weights are the whole cost: 13 MB for a 8192x2816 layer, which a kernel that only
streams the bytes reads in ~6.2 us on an H100 (bench/RESULTS.md). Whatever else the kernel does
has to hide under those loads, so it is written for instruction count and so that no value
changes lanes (no shared memory, no barriers, no layout conversions; bench/tune_gemv.py is its
sweep):

* Each lane owns one group of 32 elements per pass: its 4 code words (one 16-byte load), its 2
  scale bytes and the group's 16 activation words (bf16 pairs, four 16-byte loads, L1 hits). All
  are ``[L, 4]`` / ``[L, 2]`` loads of the same layout, split into ``[L]`` columns in registers.
* A word's 8 codes become 4 bf16x2 pairs with shifts and masks (the bit trick of
  ``nvfp4_gemm.decode_words``), one ``mul.bf16x2`` by the block scale x 2^110 (exact: the value
  has at most 6 significant bits), widened to fp32 in place and FMA'd with the activations.
  About 5 instructions per weight element, against 9 and four barriers per pass in the MMA
  kernel's old BLOCK_M = 1 path.
* A program takes ``ROWS`` rows (statically unrolled), which share the activation loads; rows
  past N are clamped for loading and not stored, so no load carries a row mask.
* No split over K, no atomics, no workspace: one program owns whole output rows.
* Weights are loaded evict-first: they are read once, the activations are re-read by every program.

Tried and dropped: several groups per lane so that scales come 8 bytes at a time (ptxas then
issues the later groups' loads only after the first group's arithmetic: slower), software prefetch
of the next pass, and persistent grid-stride programs.

Requires K % 32 == 0 (every Gemma-4 and Llama shape); ``nvfp4_gemm`` serves the rest.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .nvfp4_gemm import WORD_SCALE, _word_decode_ptx


_DECODE_WORD_F32_PTX = tl.constexpr(_word_decode_ptx("f32"))


@triton.jit
def _columns4(t):
    """[L, 4] -> its four columns as [L] tensors; the 4 are in one thread, so no data moves."""
    a, b = tl.split(tl.reshape(t, (t.shape[0], 2, 2)))   # columns 0, 2 and 1, 3
    c0, c2 = tl.split(a)
    c1, c3 = tl.split(b)
    return c0, c1, c2, c3


@triton.jit
def _lo(w):
    """The low bf16 of an int32 pair, widened to fp32 (one shift)."""
    return (w << 16).to(tl.float32, bitcast=True)


@triton.jit
def _hi(w):
    """The high bf16 of an int32 pair, widened to fp32 (one mask)."""
    return (w & -65536).to(tl.float32, bitcast=True)


@triton.jit
def _word_dot(wq, sc, xa, xb, xc, xd, acc):
    """acc + the 8 codes of each int32 word (decoded, times the bf16 scale sc) dotted with the 8
    activations held as the bf16 pairs xa..xd, in fp32. The asm's outputs are elements 0..7."""
    e0, e1, e2, e3, e4, e5, e6, e7 = tl.inline_asm_elementwise(
        _DECODE_WORD_F32_PTX, "=r,=r,=r,=r,=r,=r,=r,=r,r,h", [wq, sc], dtype=(tl.float32,) * 8, is_pure=True, pack=1)
    acc += e0 * _lo(xa)
    acc += e1 * _hi(xa)
    acc += e2 * _lo(xb)
    acc += e3 * _hi(xb)
    acc += e4 * _lo(xc)
    acc += e5 * _hi(xc)
    acc += e6 * _lo(xd)
    acc += e7 * _hi(xd)
    return acc


@triton.jit
def _load(ptr, offs, mask, MASKED: tl.constexpr, CACHE: tl.constexpr):
    """A load in the kernel's cache policy (CACHE: 0 default, 1 .cg past L1, 2 evict_first)."""
    CM: tl.constexpr = ".cg" if CACHE == 1 else ""
    EP: tl.constexpr = "evict_first" if CACHE == 2 else ""
    if MASKED:
        return tl.load(ptr + offs, mask=mask, other=0, cache_modifier=CM, eviction_policy=EP)
    return tl.load(ptr + offs, cache_modifier=CM, eviction_policy=EP)


@triton.jit
def _row_group(w_ptr, s_ptr, r, stride_wn, stride_sn, gk, gm, x0, x1, x2, x3, acc, MASKED: tl.constexpr,
               CACHE: tl.constexpr):
    """acc + row r's group gk of each lane: its 4 code words (one 16-byte load; word j = 2 a + b
    is half b of block a) times its 2 scale bytes (one 2-byte load), dotted with the group's 32
    activations (x0..x3: [L, 4] bf16 pairs, one per code word)."""
    lm = gm[:, None]
    wq = _load(w_ptr + r * stride_wn, (gk * 4)[:, None] + tl.arange(0, 4)[None, :], lm, MASKED, CACHE)
    sb = _load(s_ptr + r * stride_sn, (gk * 2)[:, None] + tl.arange(0, 2)[None, :], lm, MASKED, CACHE)
    sc = (sb.to(tl.float8e4nv, bitcast=True).to(tl.float32) * 1.2980742146337069e33).to(tl.bfloat16)  # x 2^110
    s0, s1 = tl.split(sc)
    w0, w1, w2, w3 = _columns4(wq)
    a0, a1, a2, a3 = _columns4(x0)
    acc = _word_dot(w0, s0, a0, a1, a2, a3, acc)
    a0, a1, a2, a3 = _columns4(x1)
    acc = _word_dot(w1, s0, a0, a1, a2, a3, acc)
    a0, a1, a2, a3 = _columns4(x2)
    acc = _word_dot(w2, s1, a0, a1, a2, a3, acc)
    a0, a1, a2, a3 = _columns4(x3)
    acc = _word_dot(w3, s1, a0, a1, a2, a3, acc)
    return acc


@triton.jit
def _nvfp4_gemv_kernel(x_ptr, w_ptr, s_ptr, y_ptr, N, K, g, stride_wn, stride_sn,
                       ROWS: tl.constexpr, L: tl.constexpr, EVEN_K: tl.constexpr, CACHE: tl.constexpr):
    """x int32 [K/2] (bf16 pairs), w int32 [N, K/8], s uint8 [N, K/16] -> y fp32 [N].

    A program takes ROWS (1, 2 or 4) rows; its L = 32 num_warps lanes walk K a group of 32
    elements each at a time. Rows past N are clamped to N - 1 for loading (so no load needs a row
    mask) and not stored."""
    n0 = tl.program_id(0) * ROWS
    r1 = tl.minimum(n0 + 1, N - 1)
    r2 = tl.minimum(n0 + 2, N - 1)
    r3 = tl.minimum(n0 + 3, N - 1)
    acc0 = tl.zeros((L,), dtype=tl.float32)
    acc1 = tl.zeros((L,), dtype=tl.float32)
    acc2 = tl.zeros((L,), dtype=tl.float32)
    acc3 = tl.zeros((L,), dtype=tl.float32)
    for c0 in range(0, K // 32, L):
        gk = c0 + tl.arange(0, L)                   # each lane's group of 32 elements
        gm = gk < K // 32
        # the group's activations: x32 words 16 gk + 4 j .. + 3 for its code word j, four 16-byte
        # loads into the lane that holds the codes (the same [L, 4] layout: no shuffles)
        xo = (gk * 16)[:, None] + tl.arange(0, 4)[None, :]
        x0 = _load(x_ptr, xo, gm[:, None], not EVEN_K, 0)
        x1 = _load(x_ptr, xo + 4, gm[:, None], not EVEN_K, 0)
        x2 = _load(x_ptr, xo + 8, gm[:, None], not EVEN_K, 0)
        x3 = _load(x_ptr, xo + 12, gm[:, None], not EVEN_K, 0)
        acc0 = _row_group(w_ptr, s_ptr, n0, stride_wn, stride_sn, gk, gm, x0, x1, x2, x3, acc0,
                          not EVEN_K, CACHE)
        if ROWS > 1:
            acc1 = _row_group(w_ptr, s_ptr, r1, stride_wn, stride_sn, gk, gm, x0, x1, x2, x3, acc1,
                              not EVEN_K, CACHE)
        if ROWS > 2:
            acc2 = _row_group(w_ptr, s_ptr, r2, stride_wn, stride_sn, gk, gm, x0, x1, x2, x3, acc2,
                              not EVEN_K, CACHE)
            acc3 = _row_group(w_ptr, s_ptr, r3, stride_wn, stride_sn, gk, gm, x0, x1, x2, x3, acc3,
                              not EVEN_K, CACHE)
    gs = g * WORD_SCALE    # the decode leaves 2^-16
    tl.store(y_ptr + n0, tl.sum(acc0, axis=0) * gs)
    if ROWS > 1:
        tl.store(y_ptr + n0 + 1, tl.sum(acc1, axis=0) * gs, mask=n0 + 1 < N)
    if ROWS > 2:
        tl.store(y_ptr + n0 + 2, tl.sum(acc2, axis=0) * gs, mask=n0 + 2 < N)
        tl.store(y_ptr + n0 + 3, tl.sum(acc3, axis=0) * gs, mask=n0 + 3 < N)


# (ROWS, num_warps, CACHE: 0 default, 1 .cg (past L1), 2 evict_first)
GemvConfig = tuple[int, int, int]


def gemv_config(n: int, k: int) -> GemvConfig:
    """Default, from bench/tune_gemv.py's sweep on an H100 (the eight Gemma-4-26B shapes): 2 rows
    per program (1 below 2048 rows, where programs get few); one warp per program, two where K
    has >= 128 groups of 32 (half as many passes over K), four where fewer than ~1200 programs
    would leave the SMs short of warps; evict-first weights (they are read once; the activations
    stay in L1)."""
    rows = 2 if n >= 2048 else 1
    groups = k // 32
    if groups >= 128:
        warps = 2
    elif groups >= 64 and n // rows < 1200:
        warps = 4
    else:
        warps = 1
    return rows, warps, 2


def nvfp4_w4a16_gemv(x: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor, global_scale: float,
                     poison: bool = False, config: GemvConfig | None = None) -> torch.Tensor:
    """x bf16 [1, K]; packed uint8 [N, K/2]; scales uint8 [N, K/16] -> y float32 [1, N]."""
    m, k = x.shape
    n = packed.shape[0]
    assert m == 1 and k % 32 == 0, "the GEMV takes M = 1 and K % 32 == 0"
    assert packed.shape[1] * 2 == k and scales.shape[1] * 16 == k, "shapes do not match"
    assert x.is_contiguous() and packed.stride(1) == 1 and scales.stride(1) == 1, "inner dims must be contiguous"
    rows, warps, cache = config or gemv_config(n, k)
    y = torch.full((1, n), float("nan"), dtype=torch.float32, device=x.device) if poison else \
        torch.empty((1, n), dtype=torch.float32, device=x.device)
    w = packed.view(torch.int32)
    lanes = 32 * warps
    _nvfp4_gemv_kernel[(triton.cdiv(n, rows),)](
        x.view(torch.int32), w, scales, y, n, k, float(global_scale), w.stride(0), scales.stride(0),
        ROWS=rows, L=lanes, EVEN_K=(k // 32) % lanes == 0, CACHE=cache, num_warps=warps)
    return y
