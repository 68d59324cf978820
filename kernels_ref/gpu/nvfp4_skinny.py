"""NVFP4 W4A16 for skinny batches (2 <= M <= 16) in Triton with tensor cores fed from registers:
``y = x W^T`` with W read once, 4-bit, in the checkpoint's own layout (nothing repacked).

Why another kernel: the MMA kernel of ``nvfp4_gemm.py`` hands its decoded weight tile to
``tl.dot`` through shared memory (a store, a barrier and a load per K block). Here every lane decodes
exactly the weights that its own fragment of ``mma.sync.m16n8k16`` (bf16 in, fp32 accumulate)
needs, so decoded values never leave the registers they are made in:

* A warp owns 16 weight rows (the MMA's M side: the weights are the wide operand, as in the
  swapped GEMM) and walks K 128 elements per pass. Lane l (group ``l // 4``, quad ``l % 4``) loads
  rows ``l // 4`` and ``l // 4 + 8``, group of 32 elements ``4 pass + l % 4``: 16 bytes of codes and
  2 scale bytes per row, and the same 32 activations of rows ``l // 4`` (and ``+ 8``) of x.
* The K order inside an MMA is free as long as A and B agree. A code word's decode gives the
  pairs (e_i, e_{i+4}) (``nvfp4_gemm.decode_words``' bit trick), so pairs 0, 1 of a word feed
  one MMA and pairs 2, 3 the next, and the activations are permuted to match with one ``prmt``
  per B register.
* The warps of a program split K and meet once, at the end (one reduction through shared
  memory); programs may split K further, meeting in ``nvfp4_gemm``'s workspace fix-up.
* Register layout assumption: every loop tensor is ``[L]`` or ``[L, c]`` with L = 32 num_warps and
  c in-thread, so element i lives in lane i % 32 of warp i // 32 (Triton's blocked layout for
  these shapes, checked in the TTGIR). The GPU tests check the results against float64 at
  M = 2, 9 and 16 (and verify's triton backend at M = 7) for a spread of configs.

The module also holds the M = 1 "diagonal" GEMV on the same building blocks
(``nvfp4_w4a16_gemv_mma``, at the end), the default on the largest layers.

Requires K % 32 == 0 (the last pass is masked) and M <= 16; the default for 2 <= M <= 16. With
the software pipeline (``PREFETCH``) it beats the MMA kernel on all eight Gemma-4 shapes at M = 2
and 8, and at M = 16 on seven (2816x4096: 10.0 against 9.8 us); bench/tune_skinny.py.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .nvfp4_gemm import WORD_SCALE, _word_decode_ptx
from .nvfp4_gemv import _columns4


# one word's 4 bf16x2 pairs (e_i, e_{i+4}) x scale x 2^-16: nvfp4_gemm's decode, kept as pairs
_DECODE_PAIRS_PTX = tl.constexpr(_word_decode_ptx("pairs"))
# B fragment registers from natural activation pairs: (a.lo, b.lo) and (a.hi, b.hi)
_PAIR_B_PTX = tl.constexpr("prmt.b32 $0, $2, $3, 0x5410;\nprmt.b32 $1, $2, $3, 0x7632;")
_MMA_PTX = tl.constexpr("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
                        "{$0, $1, $2, $3}, {$4, $5, $6, $7}, {$8, $9}, {$10, $11, $12, $13};")


@triton.jit
def _decode(wq, sc):
    return tl.inline_asm_elementwise(_DECODE_PAIRS_PTX, "=r,=r,=r,=r,r,h", [wq, sc],
                                     dtype=(tl.int32,) * 4, is_pure=True, pack=1)


@triton.jit
def _pair_b(xa, xb):
    return tl.inline_asm_elementwise(_PAIR_B_PTX, "=r,=r,r,r", [xa, xb], dtype=(tl.int32, tl.int32),
                                     is_pure=True, pack=1)


@triton.jit
def _mma(a0, a1, a2, a3, b0, b1, c0, c1, c2, c3):
    return tl.inline_asm_elementwise(_MMA_PTX, "=f,=f,=f,=f,r,r,r,r,r,r,f,f,f,f",
                                     [a0, a1, a2, a3, b0, b1, c0, c1, c2, c3],
                                     dtype=(tl.float32,) * 4, is_pure=True, pack=1)


@triton.jit
def _load_x(x_ptr, m, M, K2, g, ok):
    """Activation row m (masked past M and past K): group g's 16 words (bf16 pairs) as the four
    [L, 4] words of each code word."""
    o = (m * K2 + g * 16)[:, None] + tl.arange(0, 4)[None, :]
    msk = ((m < M) & ok)[:, None]
    return (tl.load(x_ptr + o, mask=msk, other=0), tl.load(x_ptr + o + 4, mask=msk, other=0),
            tl.load(x_ptr + o + 8, mask=msk, other=0), tl.load(x_ptr + o + 12, mask=msk, other=0))


@triton.jit
def _word_mmas(wlo, whi, slo, shi, BA, BB, j: tl.constexpr, NB: tl.constexpr, acc):
    """Code word j of rows lo (l // 4) and hi (+ 8), decoded once, through two MMAs (pairs 0, 1
    and 2, 3) per column block of activations (B registers BA, BB from _b_regs16). acc: the
    word's accumulator set (4 per column block)."""
    a0, a1, a2, a3, b0, b1, b2, b3 = acc
    p0, p1, p2, p3 = _decode(wlo, slo)
    q0, q1, q2, q3 = _decode(whi, shi)
    a0, a1, a2, a3 = _mma(p0, q0, p1, q1, BA[4 * j], BA[4 * j + 1], a0, a1, a2, a3)
    a0, a1, a2, a3 = _mma(p2, q2, p3, q3, BA[4 * j + 2], BA[4 * j + 3], a0, a1, a2, a3)
    if NB == 2:
        b0, b1, b2, b3 = _mma(p0, q0, p1, q1, BB[4 * j], BB[4 * j + 1], b0, b1, b2, b3)
        b0, b1, b2, b3 = _mma(p2, q2, p3, q3, BB[4 * j + 2], BB[4 * j + 3], b0, b1, b2, b3)
    return a0, a1, a2, a3, b0, b1, b2, b3


@triton.jit
def _b_regs(xw):
    """A code word's 8 activations [L, 4] (natural bf16 pairs) -> the B registers of its pairs
    (x_i, x_{i+4}), i = 0..3, ordered as _word_mmas takes them."""
    x0, x1, x2, x3 = _columns4(xw)
    b0, b1 = _pair_b(x0, x2)            # (x0, x4), (x1, x5)
    b2, b3 = _pair_b(x1, x3)            # (x2, x6), (x3, x7)
    return b0, b1, b2, b3


@triton.jit
def _tile_load(w_ptr, s_ptr, rlo, rhi, stride_wn, stride_sn, gk, ok):
    """A 16-row tile's loads for one pass: each lane's group gk of rows rlo / rhi (16 code bytes
    and 2 scale bytes each)."""
    wo = (gk * 4)[:, None] + tl.arange(0, 4)[None, :]
    so = (gk * 2)[:, None] + tl.arange(0, 2)[None, :]
    wlo = tl.load(w_ptr + (rlo * stride_wn)[:, None] + wo, mask=ok[:, None], other=0, eviction_policy="evict_first")
    whi = tl.load(w_ptr + (rhi * stride_wn)[:, None] + wo, mask=ok[:, None], other=0, eviction_policy="evict_first")
    slo = tl.load(s_ptr + (rlo * stride_sn)[:, None] + so, mask=ok[:, None], other=0, eviction_policy="evict_first")
    shi = tl.load(s_ptr + (rhi * stride_sn)[:, None] + so, mask=ok[:, None], other=0, eviction_policy="evict_first")
    return wlo, whi, slo, shi


@triton.jit
def _tile_math(wlo, whi, slo, shi, BA, BB, NB: tl.constexpr, acc, acc2):
    """A 16-row tile's codes and scale bytes for one pass against both column blocks of
    activations. Words 0, 2 accumulate into acc and words 1, 3 into acc2 (8 accumulators each, 4
    per block): two independent MMA chains, so that each MMA waits on the one two back, not on
    the previous."""
    slo = (slo.to(tl.float8e4nv, bitcast=True).to(tl.float32) * 1.2980742146337069e33).to(tl.bfloat16)  # x 2^110
    shi = (shi.to(tl.float8e4nv, bitcast=True).to(tl.float32) * 1.2980742146337069e33).to(tl.bfloat16)
    sl0, sl1 = tl.split(slo)
    sh0, sh1 = tl.split(shi)
    wl0, wl1, wl2, wl3 = _columns4(wlo)
    wh0, wh1, wh2, wh3 = _columns4(whi)
    acc = _word_mmas(wl0, wh0, sl0, sh0, BA, BB, 0, NB, acc)
    acc2 = _word_mmas(wl1, wh1, sl0, sh0, BA, BB, 1, NB, acc2)
    acc = _word_mmas(wl2, wh2, sl1, sh1, BA, BB, 2, NB, acc)
    acc2 = _word_mmas(wl3, wh3, sl1, sh1, BA, BB, 3, NB, acc2)
    return acc, acc2


@triton.jit
def _b_regs16(xa0, xa1, xa2, xa3):
    """A group's activations (four [L, 4] words, from _load_x) as its 16 B registers."""
    b0, b1, b2, b3 = _b_regs(xa0)
    b4, b5, b6, b7 = _b_regs(xa1)
    b8, b9, b10, b11 = _b_regs(xa2)
    b12, b13, b14, b15 = _b_regs(xa3)
    return b0, b1, b2, b3, b4, b5, b6, b7, b8, b9, b10, b11, b12, b13, b14, b15


@triton.jit
def _pass_loads(x_ptr, w_ptr, s_ptr, r0, r1, r2, r3, stride_wn, stride_sn, gid, M, K2, gk, ok,
                NB: tl.constexpr, TILES: tl.constexpr):
    """Every load of one pass (the pipelined loop's unit): codes and scale bytes of tile 0
    (rows r0 / r1) and tile 1 (r2 / r3; tile 0's again when TILES == 1), then the activations of
    column blocks 0 and 1 (block 0's again when NB == 1), 16 values in that order."""
    wl, wh, sl, sh = _tile_load(w_ptr, s_ptr, r0, r1, stride_wn, stride_sn, gk, ok)
    if TILES == 2:
        vl, vh, ql, qh = _tile_load(w_ptr, s_ptr, r2, r3, stride_wn, stride_sn, gk, ok)
    else:
        vl, vh, ql, qh = wl, wh, sl, sh
    xa0, xa1, xa2, xa3 = _load_x(x_ptr, gid, M, K2, gk, ok)
    if NB == 2:
        xb0, xb1, xb2, xb3 = _load_x(x_ptr, gid + 8, M, K2, gk, ok)
    else:
        xb0, xb1, xb2, xb3 = xa0, xa1, xa2, xa3
    return wl, wh, sl, sh, vl, vh, ql, qh, xa0, xa1, xa2, xa3, xb0, xb1, xb2, xb3


@triton.jit
def _pass_math(cur, NB: tl.constexpr, TILES: tl.constexpr, t0, u0, t1, u1):
    """One pass's decode and MMAs on the values _pass_loads returned (tile 0 into t0 / u0, tile 1
    into t1 / u1)."""
    BA = _b_regs16(cur[8], cur[9], cur[10], cur[11])
    if NB == 2:
        BB = _b_regs16(cur[12], cur[13], cur[14], cur[15])
    else:
        BB = BA
    t0, u0 = _tile_math(cur[0], cur[1], cur[2], cur[3], BA, BB, NB, t0, u0)
    if TILES == 2:
        t1, u1 = _tile_math(cur[4], cur[5], cur[6], cur[7], BA, BB, NB, t1, u1)
    return t0, u0, t1, u1


@triton.jit
def _nvfp4_skinny_kernel(x_ptr, w_ptr, s_ptr, y_ptr, ws_ptr, cnt_ptr, M, N, K, g, stride_wn, stride_sn,
                        NB: tl.constexpr, W: tl.constexpr, TILES: tl.constexpr, SPLIT: tl.constexpr,
                        PREFETCH: tl.constexpr):
    """x int32 [M, K/2] (bf16 pairs), w int32 [N, K/8], s uint8 [N, K/16] -> y fp32 [M, N].

    Program (pid_n, pid_k) takes TILES (1 or 2) tiles of 16 rows, which share the activations'
    B registers; its W warps and the SPLIT programs of pid_k split K's 128-element passes
    (interleaved). NB: MMA column blocks of 8 activation rows (1 for M <= 8, 2 for M <= 16)."""
    L: tl.constexpr = 32 * W
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    i = tl.arange(0, L)
    lane = i % 32
    warp = i // 32
    gid = lane // 4
    tq = lane % 4
    n0 = pid_n * 16 * TILES
    r0 = tl.minimum(n0 + gid, N - 1)           # clamped for loading; stores are masked
    r1 = tl.minimum(n0 + gid + 8, N - 1)
    r2 = tl.minimum(n0 + gid + 16, N - 1)
    r3 = tl.minimum(n0 + gid + 24, N - 1)
    KG = K // 32
    K2 = K // 2
    # accumulators: per tile, two chains (t0, u0: tile 0; t1, u1: tile 1) of 8 (4 per column block)
    t0 = _zeros8(L)
    u0 = t0
    t1 = t0
    u1 = t0
    passes = tl.cdiv(KG, 4 * W * SPLIT)
    if PREFETCH:
        # software pipeline: the next pass's codes, scales and activations are loaded before
        # this pass's decode and MMAs, so that each warp has a pass of loads in flight while it
        # computes (few warps per SM at these sizes: the loads' latency is otherwise exposed
        # once per pass)
        gk = (pid_k * W + warp) * 4 + tq
        cur = _pass_loads(x_ptr, w_ptr, s_ptr, r0, r1, r2, r3, stride_wn, stride_sn, gid, M, K2, gk, gk < KG,
                          NB, TILES)
        for p in range(passes):
            gn = (((p + 1) * SPLIT + pid_k) * W + warp) * 4 + tq    # the next pass's group
            nxt = _pass_loads(x_ptr, w_ptr, s_ptr, r0, r1, r2, r3, stride_wn, stride_sn, gid, M, K2, gn, gn < KG,
                              NB, TILES)
            t0, u0, t1, u1 = _pass_math(cur, NB, TILES, t0, u0, t1, u1)
            cur = nxt
    else:
        for p in range(passes):
            gk = ((p * SPLIT + pid_k) * W + warp) * 4 + tq    # this lane's group of 32 elements
            cur = _pass_loads(x_ptr, w_ptr, s_ptr, r0, r1, r2, r3, stride_wn, stride_sn, gid, M, K2, gk, gk < KG,
                              NB, TILES)
            t0, u0, t1, u1 = _pass_math(cur, NB, TILES, t0, u0, t1, u1)
    # D fragment of lane l: (row l // 4, columns 2 (l % 4) + 0, 1) and row + 8; after the sum over
    # warps, lane j of the [32] result holds them
    j = tl.arange(0, 32)
    nlo = n0 + j // 4
    mcol = 2 * (j % 4)
    if SPLIT == 1:
        out = y_ptr
    else:
        out = ws_ptr + pid_k * M * N
    gs = g * WORD_SCALE    # the decode leaves 2^-16
    _store(out, t0[0] + u0[0], t0[1] + u0[1], t0[2] + u0[2], t0[3] + u0[3], nlo, mcol, M, N, W, gs)
    if NB == 2:
        _store(out, t0[4] + u0[4], t0[5] + u0[5], t0[6] + u0[6], t0[7] + u0[7], nlo, mcol + 8, M, N, W, gs)
    if TILES == 2:
        _store(out, t1[0] + u1[0], t1[1] + u1[1], t1[2] + u1[2], t1[3] + u1[3], nlo + 16, mcol, M, N, W, gs)
        if NB == 2:
            _store(out, t1[4] + u1[4], t1[5] + u1[5], t1[6] + u1[6], t1[7] + u1[7], nlo + 16, mcol + 8, M, N, W, gs)
    if SPLIT > 1:
        # the programs of a row block meet as nvfp4_gemm's split-K fix-up does: partials in the
        # workspace, an acq_rel arrival count, the last one sums (past L1) and resets the counter
        tl.debug_barrier()
        arrived = tl.atomic_add(cnt_ptr + pid_n, 1, sem="acq_rel", scope="gpu")
        if arrived == SPLIT - 1:
            rn = n0 + tl.arange(0, 16 * TILES)
            cm = tl.arange(0, 16)
            o = cm[None, :] * N + rn[:, None]
            msk = (cm[None, :] < M) & (rn[:, None] < N)
            tot = tl.load(ws_ptr + o, mask=msk, other=0.0, cache_modifier=".cg")
            for sk in range(1, SPLIT):
                tot += tl.load(ws_ptr + sk * M * N + o, mask=msk, other=0.0, cache_modifier=".cg")
            tl.store(y_ptr + o, tot, mask=msk)
            tl.atomic_xchg(cnt_ptr + pid_n, 0)


@triton.jit
def _zeros8(L: tl.constexpr):
    """One accumulator chain: 8 fp32 [L] zeros (4 per MMA column block)."""
    z = tl.zeros((L,), dtype=tl.float32)
    return z, z, z, z, z, z, z, z


@triton.jit
def _warp_sum(v, W: tl.constexpr):
    """[32 W] lane values -> [32]: the sum over the W warps (that split K)."""
    if W == 1:
        return v
    return tl.sum(tl.reshape(v, (W, 32)), axis=0)


@triton.jit
def _store(y_ptr, c0, c1, c2, c3, nlo, m, M, N, W: tl.constexpr, gs):
    tl.store(y_ptr + m * N + nlo, _warp_sum(c0, W) * gs, mask=(m < M) & (nlo < N))
    tl.store(y_ptr + (m + 1) * N + nlo, _warp_sum(c1, W) * gs, mask=(m + 1 < M) & (nlo < N))
    tl.store(y_ptr + m * N + nlo + 8, _warp_sum(c2, W) * gs, mask=(m < M) & (nlo + 8 < N))
    tl.store(y_ptr + (m + 1) * N + nlo + 8, _warp_sum(c3, W) * gs, mask=(m + 1 < M) & (nlo + 8 < N))


# (warps per program, 16-row tiles per program, programs splitting K[, prefetch: 1 = software
# pipeline over K passes])
SkinnyConfig = tuple[int, ...]


def skinny_config(m: int, n: int, k: int) -> SkinnyConfig:
    """Default (bench/tune_skinny.py on an H100, the eight Gemma-4-26B shapes at M = 2, 8, 16): 4
    warps on one 16-row tile, software-pipelined (the next pass's loads in flight during this
    pass's MMAs: up to 1.2 us faster), and K split over programs only where a warp would
    otherwise walk many passes or too few warps would run (with the pipeline, fewer programs do
    better than the split-until-2560-warps rule of the unpipelined loop)."""
    tiles = -(-n // 16)
    passes = -(-k // 128)
    # about 6 passes per warp at most (K = 8192: split 3; 4096: 2), then more programs while
    # fewer than ~500 warps would run and each keeps >= 1.5 passes (704 rows: split 3)
    split = max(1, min(4, -(-passes // 24)))
    while split < 4 and tiles * split * 4 < 500 and passes / (4 * (split + 1)) >= 1.5:
        split += 1
    return 4, 1, split, 1


def nvfp4_w4a16_skinny(x: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor, global_scale: float,
                      poison: bool = False, config: SkinnyConfig | None = None) -> torch.Tensor:
    """x bf16 [M, K] (M <= 16); packed uint8 [N, K/2]; scales uint8 [N, K/16] -> y float32 [M, N]."""
    from .nvfp4_gemm import split_k_workspace

    m, k = x.shape
    n = packed.shape[0]
    assert 1 <= m <= 16 and k % 32 == 0, "the skinny kernel takes M <= 16 and K % 32 == 0"
    assert packed.shape[1] * 2 == k and scales.shape[1] * 16 == k, "shapes do not match"
    assert x.is_contiguous() and packed.stride(1) == 1 and scales.stride(1) == 1, "inner dims must be contiguous"
    warps, tiles, split, *rest = config or skinny_config(m, n, k)
    prefetch = int(rest[0]) if rest else 0
    y = torch.full((m, n), float("nan"), dtype=torch.float32, device=x.device) if poison else \
        torch.empty((m, n), dtype=torch.float32, device=x.device)
    grid = (triton.cdiv(n, 16 * tiles), split)
    ws, cnt = split_k_workspace(y, split, grid[0])
    w = packed.view(torch.int32)
    _nvfp4_skinny_kernel[grid](x.view(torch.int32), w, scales, y, ws, cnt, m, n, k, float(global_scale),
                              w.stride(0), scales.stride(0), NB=1 if m <= 8 else 2, W=warps, TILES=tiles,
                              SPLIT=split, PREFETCH=prefetch, num_warps=warps)
    return y


# -- M = 1 on the tensor cores: the "diagonal" GEMV ------------------------------------------------

@triton.jit
def _diag_take(c0, c1, lane):
    """The diagonal D[g][g] of an m16n8 accumulator: lane l (g = l // 4) holds columns 2 (l % 4)
    and + 1 of row g (c0, c1), so D[g][g] is c0 or c1 of the lane with l % 4 == g // 2; 0 elsewhere."""
    g = (lane % 32) // 4
    q = lane % 4
    return tl.where(q == g // 2, tl.where(g % 2 == 0, c0, c1), 0.0)


@triton.jit
def _nvfp4_diag_gemv_kernel(x_ptr, w_ptr, s_ptr, y_ptr, N, K, g, stride_wn, stride_sn,
                            W: tl.constexpr, TILES: tl.constexpr, PREFETCH: tl.constexpr):
    """x int32 [K/2] (bf16 pairs), w int32 [N, K/8], s uint8 [N, K/16] -> y fp32 [N]: rows
    2 TILES pid .. + 2 TILES - 1.

    Each lane owns one group of 32 elements per pass, as in the GEMV of nvfp4_gemv.py (the same
    coalesced loads: 16 code bytes and 2 scale bytes per row, 16 activation words), and feeds
    them to mma.sync.m16n8k16 as the skinny kernel does, with a twist: the A rows of quad g
    (lanes 4g..4g+3) are one weight row (A rows 0-7) and the next (rows 8-15), over the quad's own
    K range, and B's column g is the activations of that same range. So D[g][g] is the first row's
    dot product over quad g's range and D[g + 8][g] the second's; the other 112 entries of D are
    cross terms nobody reads. A seventh of the tensor core's work is used, but the multiply-adds
    leave the CUDA cores (the GEMV spends ~3 of its ~5.4 instructions per weight on widening to
    fp32 and FMAs), and the MMA accumulates in fp32 as the FMAs did. TILES (1 or 2) pairs of rows
    per program share the activations."""
    L: tl.constexpr = 32 * W
    pid = tl.program_id(0)
    i = tl.arange(0, L)
    n0 = 2 * TILES * pid
    r0 = tl.zeros((L,), dtype=tl.int32) + n0
    r1 = tl.minimum(r0 + 1, N - 1)              # clamped for loading; the stores are masked
    r2 = tl.minimum(r0 + 2, N - 1)
    r3 = tl.minimum(r0 + 3, N - 1)
    KG = K // 32
    K2 = K // 2
    t0 = _zeros8(L)   # accumulators as in the skinny kernel (tile 0: t0, u0; tile 1: t1, u1)
    u0 = t0
    t1 = t0
    u1 = t0
    passes = tl.cdiv(KG, L)
    # the skinny kernel's pass, with one column block (NB 1) whose "activation row 0" is x itself
    # at each lane's own group
    if PREFETCH:
        cur = _pass_loads(x_ptr, w_ptr, s_ptr, r0, r1, r2, r3, stride_wn, stride_sn, 0, 1, K2, i, i < KG, 1, TILES)
        for p in range(passes):
            gn = (p + 1) * L + i
            nxt = _pass_loads(x_ptr, w_ptr, s_ptr, r0, r1, r2, r3, stride_wn, stride_sn, 0, 1, K2, gn, gn < KG, 1,
                              TILES)
            t0, u0, t1, u1 = _pass_math(cur, 1, TILES, t0, u0, t1, u1)
            cur = nxt
    else:
        for p in range(passes):
            gk = p * L + i
            cur = _pass_loads(x_ptr, w_ptr, s_ptr, r0, r1, r2, r3, stride_wn, stride_sn, 0, 1, K2, gk, gk < KG, 1,
                              TILES)
            t0, u0, t1, u1 = _pass_math(cur, 1, TILES, t0, u0, t1, u1)
    gs = g * WORD_SCALE    # the decode leaves 2^-16
    tl.store(y_ptr + n0, tl.sum(_diag_take(t0[0] + u0[0], t0[1] + u0[1], i), axis=0) * gs)
    tl.store(y_ptr + n0 + 1, tl.sum(_diag_take(t0[2] + u0[2], t0[3] + u0[3], i), axis=0) * gs, mask=n0 + 1 < N)
    if TILES == 2:
        tl.store(y_ptr + n0 + 2, tl.sum(_diag_take(t1[0] + u1[0], t1[1] + u1[1], i), axis=0) * gs,
                 mask=n0 + 2 < N)
        tl.store(y_ptr + n0 + 3, tl.sum(_diag_take(t1[2] + u1[2], t1[3] + u1[3], i), axis=0) * gs,
                 mask=n0 + 3 < N)


# (warps per program, which split K; row pairs per program; prefetch)
DiagConfig = tuple[int, ...]


def diag_config(n: int, k: int) -> DiagConfig | None:
    """The diagonal GEMV's config where it is the default at M = 1, else None (the CUDA-core
    GEMV): on the layers with 8192 rows or 8192 columns, where it measured 8.2 us against 8.7
    (8192x2816) and 8.0 against 8.6 (2816x8192); elsewhere within noise of the GEMV or behind
    (704x2816, 2816x704); bench/tune_diag_gemv.py."""
    if k >= 8192:
        return 4, 2, 0
    if n >= 8192:
        return 1, 1, 0
    return None


def nvfp4_w4a16_gemv_mma(x: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor, global_scale: float,
                         poison: bool = False, config: DiagConfig | None = None) -> torch.Tensor:
    """x bf16 [1, K]; packed uint8 [N, K/2]; scales uint8 [N, K/16] -> y float32 [1, N] (the
    diagonal-MMA GEMV)."""
    m, k = x.shape
    n = packed.shape[0]
    assert m == 1 and k % 32 == 0, "the diagonal GEMV takes M = 1 and K % 32 == 0"
    assert packed.shape[1] * 2 == k and scales.shape[1] * 16 == k, "shapes do not match"
    assert x.is_contiguous() and packed.stride(1) == 1 and scales.stride(1) == 1, "inner dims must be contiguous"
    warps, tiles, prefetch = config or diag_config(n, k) or (1, 1, 0)
    y = torch.full((1, n), float("nan"), dtype=torch.float32, device=x.device) if poison else \
        torch.empty((1, n), dtype=torch.float32, device=x.device)
    w = packed.view(torch.int32)
    _nvfp4_diag_gemv_kernel[(triton.cdiv(n, 2 * tiles),)](
        x.view(torch.int32), w, scales, y, n, k, float(global_scale), w.stride(0), scales.stride(0),
        W=warps, TILES=tiles, PREFETCH=prefetch, num_warps=warps)
    return y
