"""A fused NVFP4 W4A16 GEMM in Triton: ``y = x @ W^T`` with W kept 4-bit in memory.

Layout (the checkpoint's own, nothing swizzled): ``packed`` uint8 [N, K/2] (element 2i in the low
nibble, ModelOpt / compressed-tensors order), ``scales`` uint8 E4M3 [N, K/16], one fp32 global.

Why it is shaped the way it is (decode, M <= 16, is memory bound; every instruction spent decoding
is taken from the time the loads have to hide; the tiles and the K split were searched on an
H100, bench/README.md):

* Decode (``DECODE=2``): the codes are read as int32 words; the eight E2M1 codes of a word become
  four bf16x2 registers with shifts and masks in inline PTX, and the block scale multiplies them in
  the same registers (``mul.bf16x2``). ``DECODE=0`` is the plain-Triton decode of the same bits,
  kept as the readable reference (and measured about 1.7x slower).
* ``SWAP=1`` computes ``y^T = W x^T``: the weight tile is the MMA's wide (64-row) side and a tiny
  M only pads the narrow side (wgmma m64n16k16 on Hopper).
* Small M cannot fill the SMs with output tiles alone, so the K loop is split across programs
  (``SPLIT_K``, whole K blocks each). The partial tiles meet in a workspace; the program that
  arrives last at its tile's counter sums them (the fix-up), so no zeroed output (a separate
  memset launch, 4-5 us, which fp32 atomic adds into the output would need) is needed. With
  ``REDUCE=1`` every slice waits for its peers and sums a share of the tile instead, so that wide
  tiles split many ways do not leave one program reading every plane.
* The block scales are read as int32 words of four (``SCALE_WORDS``, where the rows allow it):
  Triton pipelines loads of 4 bytes or more per thread (cp.async) and left the byte loads as a
  plain load that each K step waited on.
* M = 1 (decode) goes to the GEMV kernel of ``nvfp4_gemv.py`` (on the largest layers to the
  diagonal-MMA GEMV of ``nvfp4_skinny.py``) and 2 <= M <= 16 to the skinny
  kernel of ``nvfp4_skinny.py`` (mma.sync fed from registers) where K % 32 == 0; this kernel
  serves M >= 17 and any config asked for explicitly.
* ``TMA=1`` loads the activation tile and the code words with the Hopper tensor-memory
  accelerator instead of per-thread copies: at M = 128 the activations are most of the bytes each
  program reads (the whole 128-row x for every 64 weight rows), and TMA moves them with far fewer
  instructions: 22.5 -> 20.5 us on 8192x2816, 26.7 -> 24.5 us on 2816x8192 (bench/tune_mma.py).
  The default at M >= 17 on sm_90+ while a CUDA graph is being captured (as engines launch); eager
  calls keep the per-thread loads, because Triton encodes host descriptors at every launch
  (bench/RESULTS.md). Not with ``SWAP``: swapped operands with TMA and a
  K split computed wrong partial sums on the H100 under Triton 3.6 (the sweep's float64 check
  caught 1e33-size errors and NaN), so that combination is refused.
* ``K2 = K // 2`` and ``KS = K // 16`` come in as arguments so that Triton sees their divisibility
  by 16 and keeps masked loads 16 bytes wide; ``EVEN_K`` (K % BLOCK_K == 0) drops the K masks.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch
import triton
import triton.language as tl

from .tuned import lookup, spell_out


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


# DECODE 2: the eight E2M1 codes of one int32 word (pack=1) moved by shifts and masks straight into
# bf16 bit positions (_word_decode_ptx). Read as bf16 that is the value x 2^-126 (the bias gap
# 127 - 1; code 0.5 becomes a bf16 subnormal, which mul.bf16x2 handles exactly). The block scale
# comes in as bf16 already multiplied by 2^110, absorbing that gap: (v 2^-126) x (s 2^110) =
# v s 2^-16, exact and normal for every E2M1 x E4M3 pair (2^-26 .. 2^-4.3), so one mul.bf16x2 per
# pair; the epilogue multiplies the global by 2^16.
def _word_decode_ptx(out: str = "bf16") -> str:
    """Pair j of a word is elements (j, j + 4): sign bit 4j+3 -> 15 (shift left 12 - 4j), magnitude
    bits 4j+2..4j -> 8..6 (shift 6 - 4j); element j + 4 sits 16 bits higher under the same shifts.
    OUT "bf16": outputs $0..$7 are elements 0..7 as bf16 ($8 the word, $9 the bf16 scale); "f32":
    the same as fp32 (each half widened in place: a shift, a mask; the GEMV); "pairs": $0..$3 are
    the bf16x2 pairs j ($4 the word, $5 the scale; the skinny kernel's MMA operands)."""
    word, scale = ("$4", "$5") if out == "pairs" else ("$8", "$9")
    body = [".reg .b32 s, m, p, sc;", f"mov.b32 sc, {{{scale}, {scale}}};"]
    for j in range(4):
        sign, mag = 12 - 4 * j, 6 - 4 * j
        body += [f"shl.b32 s, {word}, {sign};" if sign else f"mov.b32 s, {word};",
                 f"shl.b32 m, {word}, {mag};" if mag >= 0 else f"shr.b32 m, {word}, {-mag};",
                 "and.b32 s, s, 0x80008000;",
                 "and.b32 m, m, 0x01C001C0;",
                 "or.b32 p, s, m;",
                 "mul.rn.bf16x2 p, p, sc;"]
        if out == "bf16":
            body.append(f"mov.b32 {{${j}, ${j + 4}}}, p;")
        elif out == "f32":
            body += [f"shl.b32 ${j}, p, 16;", f"and.b32 ${j + 4}, p, 0xFFFF0000;"]
        else:
            body.append(f"mov.b32 ${j}, p;")
    return "{\n" + "\n".join(body) + "\n}"


_DECODE_WORD_PTX = tl.constexpr(_word_decode_ptx())
# The word decode leaves weights scaled by 2^-16; every kernel's epilogue multiplies by this.
WORD_SCALE = tl.constexpr(65536.0)


@triton.jit
def _interleave8(e0, e1, e2, e3, e4, e5, e6, e7):
    """Eight [R, C] tensors -> [R, 8 C] by nested joins (in-register, no data movement). Column
    8c + 4 t0 + 2 t1 + t2 comes from argument 4 t2 + 2 t1 + t0 (join appends the minor axis)."""
    r = tl.join(tl.join(tl.join(e0, e1), tl.join(e2, e3)), tl.join(tl.join(e4, e5), tl.join(e6, e7)))
    return tl.reshape(r, (e0.shape[0], 8 * e0.shape[1]))


@triton.jit
def _e2m1_word_to_bf16(q, sc):
    """int32 [R, C] words of 8 codes, bf16 [R, C] scales x 2^110 -> bf16 [R, 8 C] x 2^-16, natural
    element order (the outputs go in bit-reversed so that _interleave8 lays them out 0..7)."""
    e0, e1, e2, e3, e4, e5, e6, e7 = tl.inline_asm_elementwise(
        _DECODE_WORD_PTX, "=h,=h,=h,=h,=h,=h,=h,=h,r,h", [q, sc], dtype=(tl.bfloat16,) * 8, is_pure=True, pack=1)
    return _interleave8(e0, e4, e2, e6, e1, e5, e3, e7)


@triton.jit
def decode_words(wq, sb, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """int32 [BLOCK_N, BLOCK_K/8] code words and uint8 E4M3 [BLOCK_N, BLOCK_K/16] block scales ->
    bf16 [BLOCK_N, BLOCK_K] weights x 2^-16 (DECODE 2; the caller's epilogue multiplies by 2^16)."""
    s = (sb.to(tl.float8e4nv, bitcast=True).to(tl.float32) * 1.2980742146337069e33).to(tl.bfloat16)  # x 2^110
    s2 = tl.reshape(tl.join(s, s), (BLOCK_N, BLOCK_K // 8))   # word c uses scale c // 2
    return _e2m1_word_to_bf16(wq, s2)


@triton.jit
def scale_word_bytes(sw, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """int32 [BLOCK_N, BLOCK_K/64] words of four E4M3 block scales each (little-endian: scale 4w + j
    in byte j of word w) -> uint8 [BLOCK_N, BLOCK_K/16] in K order. join appends the minor axis,
    so joining (b0, b2) with (b1, b3) puts byte 2t + u at position 2t + u."""
    b0 = sw & 0xFF
    b1 = (sw >> 8) & 0xFF
    b2 = (sw >> 16) & 0xFF
    b3 = (sw >> 24) & 0xFF
    r = tl.join(tl.join(b0, b2), tl.join(b1, b3))
    return tl.reshape(r, (BLOCK_N, BLOCK_K // 16)).to(tl.uint8)


@triton.jit
def _nvfp4_w4a16_kernel(x_ptr, w_ptr, s_ptr, y_ptr, ws_ptr, cnt_ptr, M, N, K, K2, KS, g,
                        stride_xm, stride_wn, stride_sn, stride_ym,
                        SPLIT_K,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                        DECODE: tl.constexpr, SWAP: tl.constexpr, EVEN_K: tl.constexpr,
                        TMA: tl.constexpr = 0, REDUCE: tl.constexpr = 0, SCALE_WORDS: tl.constexpr = 0):
    if REDUCE == 1:   # the K slices of one tile are neighbours in launch order (see the fix-up)
        pid_k = tl.program_id(0)
        pid_n = tl.program_id(1)
    else:
        pid_n = tl.program_id(0)
        pid_k = tl.program_id(2)
    pid_m = tl.program_id(1 + REDUCE)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_kh = tl.arange(0, BLOCK_K // 2)        # packed bytes (DECODE 0)
    offs_kw = tl.arange(0, BLOCK_K // 8)        # packed 32-bit words (DECODE 2)
    offs_ks = tl.arange(0, BLOCK_K // 16)       # block scales
    offs_sw = tl.arange(0, BLOCK_K // 64)       # words of four block scales (SCALE_WORDS)
    offs_k = tl.arange(0, BLOCK_K)
    if SWAP:
        acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    # split K over whole blocks: program pid_k takes blocks [start, end)
    n_blocks = tl.cdiv(K, BLOCK_K)
    per = tl.cdiv(n_blocks, SPLIT_K)
    start = pid_k * per
    end = tl.minimum(start + per, n_blocks)
    nmask = offs_n[:, None] < N
    for blk in range(start, end):
        k0 = blk * BLOCK_K
        if SCALE_WORDS:
            # the block scales as int32 words: Triton's pipeliner copies them ahead like the codes
            # (cp.async takes 4 bytes at least; a tile row's scale bytes read one by one were a
            # plain load waited on in every K step)
            sp = s_ptr + offs_n[:, None] * stride_sn + (k0 // 64 + offs_sw)[None, :]
            if EVEN_K:
                sw = tl.load(sp, mask=nmask, other=0)
            else:
                sw = tl.load(sp, mask=nmask & ((k0 // 64 + offs_sw)[None, :] < KS // 4), other=0)
            sb = scale_word_bytes(sw, BLOCK_N, BLOCK_K)
        else:
            sp = s_ptr + offs_n[:, None] * stride_sn + (k0 // 16 + offs_ks)[None, :]
            if EVEN_K:
                sb = tl.load(sp, mask=nmask, other=0)
            else:
                sb = tl.load(sp, mask=nmask & ((k0 // 16 + offs_ks)[None, :] < KS), other=0)
        if TMA:
            wq = w_ptr.load([pid_n * BLOCK_N, k0 // 8])
            w = decode_words(wq, sb, BLOCK_N, BLOCK_K)
        elif DECODE == 2:
            wp = w_ptr + offs_n[:, None] * stride_wn + (k0 // 8 + offs_kw)[None, :]
            if EVEN_K:
                wq = tl.load(wp, mask=nmask, other=0)
            else:
                wq = tl.load(wp, mask=nmask & ((k0 // 8 + offs_kw)[None, :] < K2 // 4), other=0)
            w = decode_words(wq, sb, BLOCK_N, BLOCK_K)
        else:
            wp = w_ptr + offs_n[:, None] * stride_wn + (k0 // 2 + offs_kh)[None, :]
            if EVEN_K:
                wb = tl.load(wp, mask=nmask, other=0)
            else:
                wb = tl.load(wp, mask=nmask & ((k0 // 2 + offs_kh)[None, :] < K2), other=0)
            wi = wb.to(tl.int32)
            w = tl.reshape(tl.join(_e2m1_to_bf16(wi & 0xF), _e2m1_to_bf16((wi >> 4) & 0xF)), (BLOCK_N, BLOCK_K))
            s = sb.to(tl.float8e4nv, bitcast=True).to(tl.bfloat16)   # exact: E4M3 fits bf16
            w = tl.reshape(tl.reshape(w, (BLOCK_N, BLOCK_K // 16, 16)) * tl.reshape(s, (BLOCK_N, BLOCK_K // 16, 1)),
                           (BLOCK_N, BLOCK_K))
        if TMA:   # x and the code words through TMA: out-of-range rows and columns read as zero
            x = x_ptr.load([pid_m * BLOCK_M, k0])
        elif EVEN_K:
            x = tl.load(x_ptr + offs_m[:, None] * stride_xm + (k0 + offs_k)[None, :], mask=offs_m[:, None] < M,
                        other=0.0)
        else:
            x = tl.load(x_ptr + offs_m[:, None] * stride_xm + (k0 + offs_k)[None, :],
                        mask=(offs_m[:, None] < M) & ((k0 + offs_k)[None, :] < K), other=0.0)
        if SWAP:
            acc = tl.dot(w, tl.trans(x), acc)
        else:
            acc = tl.dot(x, tl.trans(w), acc)
    if DECODE == 2:
        acc = acc * (g * WORD_SCALE)
    else:
        acc = acc * g
    if SWAP:
        y_ptrs = y_ptr + offs_m[None, :] * stride_ym + offs_n[:, None]
        ymask = (offs_m[None, :] < M) & (offs_n[:, None] < N)
    else:
        y_ptrs = y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :]
        ymask = (offs_m[:, None] < M) & (offs_n[None, :] < N)
    if SPLIT_K == 1:
        tl.store(y_ptrs, acc, mask=ymask)
    else:
        # Split-K without a zeroed output: each K slice stores its partial tile in the workspace
        # ([SPLIT_K, M, N] fp32) and counts itself in on the tile's counter (atomic, acq_rel at GPU
        # scope, after a CTA barrier so every warp's stores are released). The sums read the planes
        # with .cg loads (past L1, which is not coherent), always in plane order 0, 1, ..., so the
        # result is the same bits whichever program sums.
        plane = tl.cast(M, tl.int64) * N    # 64-bit: split x M x N passes 2^31 on large layers
        if SWAP:
            w_ptrs = ws_ptr + pid_k * plane + offs_m[None, :] * N + offs_n[:, None]
        else:
            w_ptrs = ws_ptr + pid_k * plane + offs_m[:, None] * N + offs_n[None, :]
        tl.store(w_ptrs, acc, mask=ymask)
        tl.debug_barrier()
        tile = pid_m * tl.cdiv(N, BLOCK_N) + pid_n
        if REDUCE == 0:
            # the slice that arrives last sums the planes into y and resets the counter, so the
            # counters stay zero between launches and need no memset (its own plane comes back
            # from L2 too: taking it from the accumulator would move every plane into the MMA
            # register layout through shared memory)
            arrived = tl.atomic_add(cnt_ptr + tile, 1, sem="acq_rel", scope="gpu")
            if arrived == SPLIT_K - 1:
                tot = tl.load(w_ptrs - pid_k * plane, mask=ymask, other=0.0, cache_modifier=".cg")
                for sk in range(1, SPLIT_K):
                    tot += tl.load(w_ptrs + (sk - pid_k) * plane, mask=ymask, other=0.0, cache_modifier=".cg")
                tl.store(y_ptrs, tot, mask=ymask)
                tl.atomic_xchg(cnt_ptr + tile, 0)
        else:
            # Every slice waits until all SPLIT_K have stored their planes, then sums its share of
            # the tile's 16 row bands: one program summing whole tiles (REDUCE 0) reads SPLIT_K
            # tiles alone, the wide-tile configs' critical path. Waiting on peers needs them
            # resident: the launcher allows REDUCE 1 only where the grid is at most one program
            # per SM (and the peers are neighbours in launch order, pid_k being grid axis 0).
            # Counters: arrivals at 2 tile, departures at 2 tile + 1; the last to leave zeroes
            # both (everyone has seen all arrivals by then).
            arrived = tl.atomic_add(cnt_ptr + 2 * tile, 1, sem="acq_rel", scope="gpu") + 1
            while arrived < SPLIT_K:
                arrived = tl.atomic_add(cnt_ptr + 2 * tile, 0, sem="acquire", scope="gpu")
            left = tl.atomic_add(cnt_ptr + 2 * tile + 1, 1, sem="acq_rel", scope="gpu")
            RB: tl.constexpr = BLOCK_M // 16
            rows0 = pid_m * BLOCK_M + tl.arange(0, RB)
            cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
            for band in range(pid_k, 16, SPLIT_K):
                rows = rows0 + band * RB
                bmask = (rows[:, None] < M) & (cols[None, :] < N)
                off = rows[:, None] * N + cols[None, :]
                tot = tl.load(ws_ptr + off, mask=bmask, other=0.0, cache_modifier=".cg")
                for sk in range(1, SPLIT_K):
                    tot += tl.load(ws_ptr + sk * plane + off, mask=bmask, other=0.0, cache_modifier=".cg")
                tl.store(y_ptr + rows[:, None] * stride_ym + cols[None, :], tot, mask=bmask)
            if left == SPLIT_K - 1:
                tl.atomic_xchg(cnt_ptr + 2 * tile, 0)
                tl.atomic_xchg(cnt_ptr + 2 * tile + 1, 0)


# (BLOCK_M, BLOCK_N, BLOCK_K, SPLIT_K, num_warps, num_stages, DECODE, SWAP[, TMA[, REDUCE]]);
# SPLIT_K is a runtime argument (one compiled kernel serves every split); TMA and REDUCE (how a K
# split's partial tiles are summed: 0 by the last slice to arrive, 1 shared by all slices) left out
# mean 0
Config = tuple[int, ...]


def _config(m: int, n: int, k: int, in_graph: bool | None = None, use_table: bool = True) -> Config:
    """Default tiles: this GPU's measured best for the layer where mma_tuned.json has it (tuned.py;
    USE_TABLE False skips it, for the sweep that writes it), else the rules below, searched on an
    H100 (the Gemma-4-26B shapes; bench/README.md). IN_GRAPH: whether the call is captured into a
    CUDA graph (None: whether it is now)."""
    sms, _, name = _device_info(torch.cuda.current_device())
    if in_graph is None:
        in_graph = torch.cuda.is_current_stream_capturing()
    tuned = lookup(name, m, n, k) if m > 16 and use_table else None
    if tuned is not None:
        # measured under graph timing; eager calls keep per-thread loads (see TMA below); the
        # shared split-K sum only where its grid is one program per SM on this GPU (a MIG slice
        # can carry the full GPU's name with fewer SMs), else the same tiles with REDUCE 0
        return tuned[:8] + (int(tuned[8] and tma_ok(k) and in_graph), int(tuned[9] and one_wave(m, n, tuned, sms)))
    narrow = m > 64 and narrow_tiles(m, n, k)
    if m <= 16:
        bm, bn, warps, stages, swap, max_split = 16, 64, 4, 3, 1, 8
        # the widest K block that divides K: no K masks (2112 and 704 take 64)
        bk = next((b for b in (256, 128) if k % b == 0), 64)
    elif narrow:
        # 128 x 32 tiles: twice the programs of 128 x 64 without a K split, so small-K layers need
        # none (2816x704 at M = 128: 9.9 -> 6.6 us); three stages keep two programs per SM
        bm, bn, bk, warps, stages, swap, max_split = 128, 32, 128, 4, 3, 0, 4
    else:
        bm, bn, bk, warps, stages, swap, max_split = (64 if m <= 64 else 128), 64, 128, 4, 4, 0, 4
    tiles = triton.cdiv(n, bn) * triton.cdiv(m, bm)
    blocks = triton.cdiv(k, bk)
    split = 1
    if narrow:
        # one wave of two programs per SM, each with at least four K blocks (measured on the ten
        # Gemma-4-26B shapes: a second wave or shorter K slices cost more than the split gains)
        while split < max_split and tiles * (split + 1) <= 2 * sms and blocks >= 4 * (split + 1):
            split += 1
    elif m <= 16:
        # the split-K fix-up costs no memset: aim at about two programs per SM (the loads need
        # more in flight than one 4-warp program keeps), each with at least one K block
        # (measured on the eight Gemma-4-26B shapes: 8192x2816 split 3, 2816x8192 and 2816x4096
        # 6-8, 2816x704 6 at BLOCK_K 64)
        while tiles * split < 2 * sms and split < max_split and blocks >= split + 1:
            split += 1
    else:
        # 128 x 64 (or 64 x 64) tiles: about one wave of output tiles (2816x8192 at M = 128: split
        # 3, 37.6 -> 32.3 us; 128 tiles of 8192x2816 stay unsplit: split 2 measured 30 vs 22 us)
        while tiles * split < 0.75 * sms and split < max_split and blocks >= 2 * (split + 1):
            split += 1
    if m <= 16:
        return bm, bn, bk, split, warps, stages, 2, swap
    # TMA only where the launch is being captured into a CUDA graph: eagerly, Triton encodes the
    # two descriptors on the host at every launch (+10-90 us per call on the H100 machine's CPU,
    # against 2 us of GPU time saved; bench/RESULTS.md), while a graph pays that once
    return bm, bn, bk, split, warps, stages, 2, swap, int(tma_ok(k) and in_graph)


# Every 32-column program reads the whole activation tile column of its M block from L2: at
# BLOCK_N 32 that is 2 M K (N / 32) bytes, twice 128 x 64's. Up to this many bytes the extra
# programs win (the six Gemma-4-26B shapes of at most 2816 x 2112 at M = 128: 0.49-0.65x ->
# 0.57-0.76x cuBLAS bf16); above it the re-reads cost more (8192x2816: 20.3 -> 24.8 us,
# 4096x2816: 16.0 -> 16.9 us; `git show 2b29d2c:bench/RESULTS.md`, "GPU: speed").
NARROW_TILE_REREAD_BYTES = 48 * 2**20


def narrow_tiles(m: int, n: int, k: int) -> bool:
    """Whether 128 x 32 output tiles rather than 128 x 64 suit this shape (NARROW_TILE_REREAD_BYTES;
    _config asks at M > 64 only)."""
    return 2 * m * k * n // 32 <= NARROW_TILE_REREAD_BYTES


def one_wave(m: int, n: int, config: Config, sms: int) -> bool:
    """Whether CONFIG's grid on an M x N output is at most one program per SM: where REDUCE 1 may
    run (its K slices wait for each other, so every program must be resident at once, whatever
    order the GPU dispatches them in)."""
    bm, bn, _, split = config[:4]
    return triton.cdiv(n, bn) * triton.cdiv(m, bm) * split <= sms


def scale_words_ok(scales: torch.Tensor, block_k: int) -> bool:
    """Whether the kernel can read this block-scale tensor ([N, K/16] uint8) as int32 words of four:
    whole words per K block (BLOCK_K % 64 == 0), rows of whole words (K % 64 == 0) starting
    4-byte aligned."""
    return block_k % 64 == 0 and scales.shape[1] % 4 == 0 and scales.stride(0) % 4 == 0 \
        and scales.data_ptr() % 4 == 0


def tma_ok(k: int) -> bool:
    """Whether TMA can load this K's tiles: every row must start 16-byte aligned, bf16 x rows (2K
    bytes) and packed code rows (K/2 bytes), on an sm_90+ GPU."""
    return k % 32 == 0 and _device_info(torch.cuda.current_device())[1] >= 9


@functools.lru_cache(maxsize=None)
def _device_info(device: int) -> tuple[int, int, str]:
    """(SM count, compute-capability major, device name), asked once per device: the query costs
    more host time than the rest of a launch's Python."""
    p = torch.cuda.get_device_properties(device)
    return p.multi_processor_count, p.major, p.name


def default_kernel(m: int, k: int, n: int) -> str:
    """Which kernel a call without ``config`` runs: "gemv" (M = 1, nvfp4_gemv.py), "gemv-mma" (M = 1
    on the largest layers: the diagonal-MMA GEMV of nvfp4_skinny.py), "skinny" (2 <= M <= 16,
    nvfp4_skinny.py; all three need K % 32 == 0) or "mma" (this module)."""
    if k % 32 == 0 and m == 1:
        from .nvfp4_skinny import diag_config

        return "gemv-mma" if diag_config(n, k) is not None else "gemv"
    if k % 32 == 0 and 2 <= m <= 16:
        return "skinny"
    return "mma"


def default_config(m: int, n: int, k: int, in_graph: bool | None = None) -> tuple[str, tuple]:
    """The kernel and config a call without ``config`` runs: for reports and benches (IN_GRAPH:
    as captured into a CUDA graph, or not; None: as a call made here and now)."""
    kernel = default_kernel(m, k, n)
    if kernel == "gemv":
        from .nvfp4_gemv import gemv_config

        return kernel, gemv_config(n, k)
    if kernel == "gemv-mma":
        from .nvfp4_skinny import diag_config

        return kernel, diag_config(n, k)
    if kernel == "skinny":
        from .nvfp4_skinny import skinny_config

        return kernel, skinny_config(m, n, k)
    return kernel, _config(m, n, k, in_graph)


def nvfp4_w4a16_gemm(x: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor, global_scale: float,
                     poison: bool = False, config: Config | None = None) -> torch.Tensor:
    """x bf16 [M, K]; packed uint8 [N, K/2]; scales uint8 [N, K/16] -> y float32 [M, N]. Without
    a config, M = 1 takes a GEMV kernel and 2 <= M <= 16 the skinny one (default_kernel)."""
    m, k = x.shape
    n = packed.shape[0]
    kernel = default_kernel(m, k, n) if config is None else "mma"
    if kernel == "gemv":
        from .nvfp4_gemv import nvfp4_w4a16_gemv

        return nvfp4_w4a16_gemv(x.contiguous(), packed, scales, global_scale, poison=poison)
    if kernel == "gemv-mma":
        from .nvfp4_skinny import nvfp4_w4a16_gemv_mma

        return nvfp4_w4a16_gemv_mma(x.contiguous(), packed, scales, global_scale, poison=poison)
    if kernel == "skinny":
        from .nvfp4_skinny import nvfp4_w4a16_skinny

        return nvfp4_w4a16_skinny(x.contiguous(), packed, scales, global_scale, poison=poison)
    assert packed.shape[1] * 2 == k and scales.shape[1] * 16 == k, "shapes do not match"
    assert x.stride(1) == 1 and packed.stride(1) == 1 and scales.stride(1) == 1, "inner dims must be contiguous"
    bm, bn, bk, split, warps, stages, decode, swap, tma, reduce = spell_out(config or _config(m, n, k))
    if tma and (swap or decode != 2 or not tma_ok(k)):
        raise ValueError(f"config {config}: TMA needs DECODE 2, no SWAP (wrong results seen with it) "
                         f"and K % 32 == 0 on an sm_90+ GPU (K = {k})")
    if tma and (x.data_ptr() % 16 or packed.data_ptr() % 16 or x.stride(0) % 8 or packed.stride(0) % 16):
        tma = 0   # a view TMA cannot describe (unaligned start or rows); the per-thread loads can
    if reduce and bm < 16:
        raise ValueError(f"config {config}: REDUCE 1 sums 16 row bands, so BLOCK_M must be at least 16")
    tiles = (triton.cdiv(n, bn), triton.cdiv(m, bm))
    if reduce and not one_wave(m, n, (bm, bn, bk, split), sms := _device_info(x.device.index)[0]):
        raise ValueError(f"config {config}: REDUCE 1 runs one wave, {tiles[0] * tiles[1]} tiles x split "
                         f"{split} = {tiles[0] * tiles[1] * split} programs on {sms} SMs; use REDUCE 0 or a "
                         f"smaller split")
    grid = (split, *tiles) if reduce else (*tiles, split)
    y = torch.full((m, n), float("nan"), dtype=torch.float32, device=x.device) if poison else \
        torch.empty((m, n), dtype=torch.float32, device=x.device)
    ws, cnt = split_k_workspace(y, split, tiles[0] * tiles[1] * (2 if reduce else 1))
    w = packed.view(torch.int32) if decode == 2 else packed   # DECODE 2 reads whole words
    scale_words = scale_words_ok(scales, bk)
    if scale_words:
        scales = scales.view(torch.int32)
    strides = (x.stride(0), w.stride(0), scales.stride(0), y.stride(0))
    if tma:
        from triton.tools.tensor_descriptor import TensorDescriptor

        x = TensorDescriptor.from_tensor(x, [bm, bk])
        w = TensorDescriptor.from_tensor(w, [bn, bk // 8])
    _nvfp4_w4a16_kernel[grid](x, w, scales, y, ws, cnt, m, n, k, k // 2, k // 16, float(global_scale),
                              *strides, split,
                              BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, DECODE=decode, SWAP=swap, EVEN_K=k % bk == 0,
                              TMA=tma, REDUCE=reduce, SCALE_WORDS=scale_words, num_warps=warps,
                              num_stages=stages)
    return y


# Split-K sums partial tiles through a workspace and per-tile arrival counters instead of
# atomics into a zeroed output (a memset launch of 4-5 us, a quarter of a small GEMV). The
# counters are allocated zeroed once per device and every launch leaves them zero again; two
# launches running at once on different streams must not share them (verify and the benches run
# on one stream).
_COUNTERS: dict[tuple[str, int | None], torch.Tensor] = {}


def _tile_counters(n_counters: int, device: torch.device) -> torch.Tensor:
    key = (device.type, device.index)
    c = _COUNTERS.get(key)
    if c is None or c.numel() < n_counters:
        c = _COUNTERS[key] = torch.zeros(max(n_counters, 1 << 14), dtype=torch.int32, device=device)
    return c


def split_k_workspace(y: torch.Tensor, split: int, n_counters: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The fix-up's partial-sum workspace [split, M, N] (fp32, uninitialised: the caching
    allocator, no launch) and n_counters arrival counters (one per output tile, two with REDUCE
    1); (y, y) when split == 1 (the kernels take the pointers but never touch them)."""
    if split == 1:
        return y, y
    ws = torch.empty((split, *y.shape), dtype=torch.float32, device=y.device)
    return ws, _tile_counters(n_counters, y.device)


def pack_for_kernel(codes: np.ndarray, scale_bytes: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    from nvfp4tools.kernels_ref.fp4 import pack_nibbles_hf

    # np.array copies: the inputs may be read-only memory maps, which torch refuses to wrap
    packed = torch.from_numpy(np.array(pack_nibbles_hf(codes), dtype=np.uint8)).cuda()
    scales = torch.from_numpy(np.array(scale_bytes, dtype=np.uint8)).cuda()
    return packed, scales


@dataclass
class GpuWeight:
    """One NVFP4 weight on the GPU as the kernel reads it, with its float32 dequantization (the
    reference operand; ``.to(torch.bfloat16)`` is what cuBLAS bf16 is timed against)."""

    packed: torch.Tensor     # uint8 [N, K/2]
    scales: torch.Tensor     # uint8 E4M3 [N, K/16]
    global_scale: float      # multiplier
    w: torch.Tensor          # float32 [N, K]

    @property
    def nbytes(self) -> int:
        return self.packed.numel() + self.scales.numel()


def upload(codes: np.ndarray, scale_bytes: np.ndarray, global_scale: float) -> GpuWeight:
    """Canonical NVFP4 parts (codes [N, K], E4M3 bytes [N, K/16], global) -> a GpuWeight."""
    from nvfp4tools.kernels_ref.fp4 import pack_nibbles_hf
    from nvfp4tools.kernels_ref.nvfp4 import NVFP4Tensor, dequantize_nvfp4

    packed, scales = pack_for_kernel(codes, scale_bytes)
    g = np.float32(global_scale)
    w = dequantize_nvfp4(NVFP4Tensor(pack_nibbles_hf(codes), np.asarray(scale_bytes, np.uint8), g))
    return GpuWeight(packed, scales, float(g), torch.from_numpy(w).cuda())


def random_weight(n: int, k: int, rng: np.random.Generator) -> GpuWeight:
    """A random N x K weight (normal, std 0.02) quantized with the ModelOpt-exact reference."""
    from nvfp4tools.kernels_ref.fp4 import unpack_nibbles_hf
    from nvfp4tools.kernels_ref.nvfp4 import quantize_nvfp4

    q = quantize_nvfp4(rng.standard_normal((n, k)).astype(np.float32) * 0.02)
    return upload(unpack_nibbles_hf(q.packed), q.block_scale, float(q.global_scale))


# -- W4A4 emulation ----------------------------------------------------------------------------

@triton.jit
def _nvfp4_act_fakequant_kernel(x_ptr, o_ptr, K, g, stride_xm, stride_om, BLOCK_K: tl.constexpr):
    """Activations [M, K] (fp32) -> E2M1 code x E4M3 block scale, as bf16 (exact: at most 2 x 4
    significant bits); the input global multiplies the GEMM's epilogue instead. The same fp32
    operations in the same order as kernels_ref.nvfp4.quantize_nvfp4 (ModelOpt-exact): block amax
    / (6 g), zero -> 1, clamp to [2^-9, 448], E4M3 round-to-nearest-even, x / (scale g) with
    IEEE division (div_rn, not Triton's approximate '/'), E2M1 round-half-to-even on the grid."""
    pid_m = tl.program_id(0)
    pid_k = tl.program_id(1)
    offs = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    x = tl.load(x_ptr + pid_m * stride_xm + offs, mask=offs < K, other=0.0).to(tl.float32)
    xb = tl.reshape(x, (BLOCK_K // 16, 16))
    amax = tl.max(tl.abs(xb), axis=1)
    scale = tl.math.div_rn(amax, 6.0 * g)
    scale = tl.where(scale == 0.0, 1.0, scale)
    scale = tl.minimum(tl.maximum(scale, 0.001953125), 448.0)          # [2^-9, 448]
    s8 = scale.to(tl.float8e4nv).to(tl.float32)
    q = tl.math.div_rn(xb, (s8 * g)[:, None])
    mag = tl.abs(q)
    # ordinal on the E2M1 grid: bounds 0.25 0.75 1.25 1.75 2.5 3.5 5; ties at 0.75/1.75/3.5 go up
    o = ((mag > 0.25).to(tl.int32) + (mag >= 0.75).to(tl.int32) + (mag > 1.25).to(tl.int32)
         + (mag >= 1.75).to(tl.int32) + (mag > 2.5).to(tl.int32) + (mag >= 3.5).to(tl.int32)
         + (mag > 5.0).to(tl.int32))
    v = tl.where(o < 4, o.to(tl.float32) * 0.5,
                 tl.where(o == 4, 2.0, tl.where(o == 5, 3.0, tl.where(o == 6, 4.0, 6.0))))
    v = tl.where(q < 0, -v, v) * s8[:, None]
    tl.store(o_ptr + pid_m * stride_om + offs, tl.reshape(v, (BLOCK_K,)).to(tl.bfloat16), mask=offs < K)


def nvfp4_fakequant_activations(x: torch.Tensor, input_scale: float) -> torch.Tensor:
    """fp32 [M, K] -> bf16 [M, K] holding code x block scale (the input global is left out)."""
    m, k = x.shape
    assert k % 16 == 0, "K must be a multiple of 16"
    x = x.contiguous().float()
    out = torch.empty((m, k), dtype=torch.bfloat16, device=x.device)
    bk = 256
    _nvfp4_act_fakequant_kernel[(m, triton.cdiv(k, bk))](x, out, k, float(input_scale), x.stride(0), out.stride(0),
                                                         BLOCK_K=bk)
    return out


def nvfp4_w4a4_gemm(x: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor, global_scale: float,
                    input_scale: float, poison: bool = False, config: Config | None = None) -> torch.Tensor:
    """W4A4 emulation: activations fake-quantized to NVFP4 per 16-block with the static input scale
    (as the deployed W4A4 kernels quantize them), then the W4A16 kernel on the exact bf16 codes x
    scales, both globals in the epilogue. x fp32 [M, K] -> y fp32 [M, N]."""
    import numpy as np_

    xq = nvfp4_fakequant_activations(x, input_scale)
    g = float(np_.float32(global_scale) * np_.float32(input_scale))
    return nvfp4_w4a16_gemm(xq, packed, scales, g, poison=poison, config=config)
