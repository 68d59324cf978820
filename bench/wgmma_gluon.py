"""Experiment (session 9), not part of the package: NVFP4 W4A16 for skinny batches on Hopper's
warpgroup MMA, written in Gluon (Triton's explicit-layout dialect), so that the decoded weights
never leave the registers they are decoded in and the activations are not reloaded per lane.

The question it answers: does the activation side limit the skinny mma.sync kernel
(kernels_ref/gpu/nvfp4_skinny.py) at M = 16? There every lane loads, permutes and feeds its own
copy of the B fragment for every 16 weight rows. Here ``wgmma`` takes A (the decoded weight tile,
64 rows per warpgroup) from registers and B (the activations) from shared memory, staged once per
program, so a pass costs the weight loads, the decode and one wgmma per 16 K elements (about 210
SASS instructions per warp and 16 x 128 weights, against about 313 for the skinny kernel at M = 16).

Answer (bench/gpu_wgmma.py on the H100, bench/RESULTS.md "Session 9"): no. It is correct (relative
error 1e-7 against float64) but its best is 11.5-12.0 us at M = 16 on 8192x2816 (skinny 13.0) and
14.1 on 2816x8192 (skinny 14.4), and at M = 1 it still takes 10.1 / 10.7 us: the M-independent part
(streaming and decoding the weights, the split-K meeting) is what costs, not the activations.

Session 10 added config entry 6, ``CP``: every pass's weights copied to shared memory by cp.async
at the start of the program (one commit group per pass, ``_copy_all``), so that all of a program's
weight bytes are in flight at once instead of PF passes ahead in registers. The question: is the
M-independent part a latency chain (too few bytes in flight)? Answer: no. Correct, but slower in
every config: best 13.9 / 15.4 us at M = 16 against 12.2 / 14.1 for the register path (same run).

Layout (the skinny kernel's K-order trick): wgmma's A fragment gives lane l the rows ``l // 4`` and
``l // 4 + 8`` of its warp's 16 and, per k16 step, the K pairs ``2 (l % 4)`` and ``2 (l % 4) + 8``.
K order inside a product is free as long as A and B agree, so lane l instead takes one physical
group of 32 elements per row and pass (one 16-byte load per row), and the activations are written
to shared memory in the same permuted order (a bit permutation of the index inside each
128-element pass, done as a register reshape/permute before the store). Needs K % 128 == 0, M <= 16.
"""

from __future__ import annotations

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.ampere import async_copy
from triton.experimental.gluon.language.nvidia.hopper import fence_async_shared, warpgroup_mma, warpgroup_mma_wait

from nvfp4tools.kernels_ref.gpu.nvfp4_gemm import _word_decode_ptx, split_k_workspace

_DECODE_PAIRS = gl.constexpr(_word_decode_ptx("pairs"))
_PLAIN = gl.constexpr(gl.SwizzledSharedLayout(vec=1, per_phase=1, max_phase=1, order=[1, 0]))


@gluon.jit
def _decode(w, sc):
    return gl.inline_asm_elementwise(_DECODE_PAIRS, "=r,=r,=r,=r,r,h", [w, sc], dtype=(gl.int32,) * 4,
                                     is_pure=True, pack=1)


@gluon.jit
def _bf16_scale(s):
    """E4M3 scale bytes (int32, low byte) -> bf16 x 2^110 (the decode's exponent offset)."""
    return ((s & 0xFF).to(gl.uint8).to(gl.float8e4nv, bitcast=True).to(gl.float32)
            * 1.2980742146337069e33).to(gl.bfloat16)


@gluon.jit
def _split4(t):
    """[R, 4, 4] -> its four [R, 4] slices along the last axis (register-only)."""
    a, b = gl.split(gl.reshape(t, (t.shape[0], t.shape[1], 2, 2)))   # j = 0, 2 and 1, 3
    w0, w2 = gl.split(a)
    w1, w3 = gl.split(b)
    return w0, w1, w2, w3


@gluon.jit
def _word_pairs(w, sc):
    """A word's four bf16x2 pairs, joined on a new last axis [R, 4, 2, 2] (p % 2 minor, then p // 2)."""
    p0, p1, p2, p3 = _decode(w, sc)
    return gl.join(gl.join(p0, p1), gl.join(p2, p3))


@gluon.jit
def _a_tile(wt, st, AL: gl.constexpr):
    """Codes [64, 16] int32 (4 words per lane and row) and scale pairs [64, 4] (int32, two E4M3
    bytes) -> the decoded [64, 128] bf16 A operand (x 2^-16) in wgmma's register layout, K
    permuted: logical pair column c = tq + 4 (p % 2) + 8 (p // 2) + 16 j for word j, pair p."""
    R: gl.constexpr = wt.shape[0]
    w0, w1, w2, w3 = _split4(gl.reshape(wt, (R, 4, 4)))
    st = gl.convert_layout(st, w0.type.layout)
    slo = _bf16_scale(st)
    shi = _bf16_scale(st >> 8)
    q0 = _word_pairs(w0, slo)
    q1 = _word_pairs(w1, slo)
    q2 = _word_pairs(w2, shi)
    q3 = _word_pairs(w3, shi)
    q = gl.join(gl.join(q0, q1), gl.join(q2, q3))          # [R, 4(tq), 2(p%2), 2(p//2), 2(j%2), 2(j//2)]
    q = gl.permute(q, (0, 5, 4, 3, 2, 1))                    # [R, j//2, j%2, p//2, p%2, tq]
    return _pairs_to_a(gl.reshape(q, (R, 64)), AL)


@gluon.jit
def _pairs_to_a(q, AL: gl.constexpr):
    """int32 bf16x2 pairs [R, C] -> bf16 [R, 2 C] (low half first) in the A operand layout."""
    R: gl.constexpr = q.shape[0]
    C: gl.constexpr = q.shape[1]
    lo = q.to(gl.int16).to(gl.bfloat16, bitcast=True)
    hi = (q >> 16).to(gl.int16).to(gl.bfloat16, bitcast=True)
    return gl.convert_layout(gl.reshape(gl.join(lo, hi), (R, 2 * C)), AL)


@gluon.jit
def _a_halves(wt, st, AL: gl.constexpr):
    """As _a_tile, as two [64, 64] halves (words 0, 1 and 2, 3 of each lane's group); the second
    is returned as its undecoded words and scale (decoded by _a_half2 after the first wgmma)."""
    R: gl.constexpr = wt.shape[0]
    w0, w1, w2, w3 = _split4(gl.reshape(wt, (R, 4, 4)))
    st = gl.convert_layout(st, w0.type.layout)
    q = gl.join(_word_pairs(w0, _bf16_scale(st)), _word_pairs(w1, _bf16_scale(st)))   # [R, 4, 2, 2, 2(j)]
    q = gl.reshape(gl.permute(q, (0, 4, 3, 2, 1)), (R, 32))
    return _pairs_to_a(q, AL), (w2, w3, _bf16_scale(st >> 8))


@gluon.jit
def _a_half2(h):
    """The second half's pairs [R, 32] from what _a_halves returned for it."""
    w2, w3, sc = h
    R: gl.constexpr = w2.shape[0]
    q = gl.join(_word_pairs(w2, sc), _word_pairs(w3, sc))
    q = gl.reshape(gl.permute(q, (0, 4, 3, 2, 1)), (R, 32))
    return q


@gluon.jit
def _x_pass(x_ptr, m, k, M, K, kp):
    kk = kp * 128 + k
    return gl.load(x_ptr + m * K + kk, mask=(m < M) & (kk < K), other=0.0)


@gluon.jit
def _stage_x(x_ptr, b_smem, M, K, kp0, NPAD: gl.constexpr, NP2: gl.constexpr, NW: gl.constexpr):
    """Activations rows 0..NPAD-1 (0 past M) of passes kp0 .. kp0 + NP2 - 1 (0 past K) into
    b_smem [NP2, NPAD, 128], each pass's 128 elements in the A operand's permuted K order. The
    loads run 4 passes ahead of the stores (a store right after its load would wait out the
    load's latency once per pass)."""
    XL: gl.constexpr = gl.BlockedLayout(size_per_thread=[1, 8], threads_per_warp=[2, 16], warps_per_cta=[NW, 1],
                                        order=[1, 0])
    m = gl.arange(0, NPAD, layout=gl.SliceLayout(1, XL))[:, None]
    k = gl.arange(0, 128, layout=gl.SliceLayout(0, XL))[None, :]
    x0 = _x_pass(x_ptr, m, k, M, K, kp0)
    x1 = _x_pass(x_ptr, m, k, M, K, kp0 + 1)
    x2 = _x_pass(x_ptr, m, k, M, K, kp0 + 2)
    x3 = _x_pass(x_ptr, m, k, M, K, kp0 + 3)
    for i in gl.static_range(NP2):
        # physical index bits in a pass (high to low): tq(2) j(2) b p1 p0 -> logical: j(2) p1 p0 tq(2) b
        xt = gl.reshape(x0, (NPAD, 2, 2, 2, 2, 2, 2, 2))      # dims 1..7: tq1 tq0 j1 j0 b p1 p0
        xt = gl.permute(xt, (0, 3, 4, 6, 7, 1, 2, 5))          # j1 j0 p1 p0 tq1 tq0 b
        b_smem.index(i).store(gl.reshape(xt, (NPAD, 128)))
        x0 = x1
        x1 = x2
        x2 = x3
        if i + 4 < NP2:
            x3 = _x_pass(x_ptr, m, k, M, K, kp0 + i + 4)


@gluon.jit
def _loads(w_ptr, s_ptr, rw, cw, rs, cs, stride_wn, stride_sn, kp, KP):
    """Pass kp's code words [64, 16] and scale-byte pairs [64, 4] (zeros past the last pass KP)."""
    wt = gl.load(w_ptr + rw * stride_wn + kp * 16 + cw, mask=(cw >= 0) & (kp < KP), other=0)
    st = gl.load(s_ptr + rs * stride_sn + kp * 4 + cs, mask=(cs >= 0) & (kp < KP), other=0).to(gl.int32)
    return wt, st


@gluon.jit
def _copy_all(w_ptr, s_ptr, n0, N, stride_wn, stride_sn, kp0, KP, NPASS: gl.constexpr, NP2: gl.constexpr,
              BN: gl.constexpr, NW: gl.constexpr):
    """Issue cp.async copies of passes kp0 .. kp0 + NPASS - 1 (codes [BN, 16] int32, scale pairs
    [BN, 2] int32 words; zero-filled past the last pass KP), one commit group per pass."""
    CL: gl.constexpr = gl.BlockedLayout(size_per_thread=[1, 4], threads_per_warp=[8, 4], warps_per_cta=[NW, 1],
                                        order=[1, 0])
    # the scale pairs are copied as int32 words (two pairs each): a row of K / 32 int16 need not
    # start on a 4-byte boundary that the compiler can prove, and cp.async moves 4 bytes at least
    TL: gl.constexpr = gl.BlockedLayout(size_per_thread=[1, 1], threads_per_warp=[16, 2], warps_per_cta=[NW, 1],
                                        order=[1, 0])
    w_smem = gl.allocate_shared_memory(gl.int32, [NP2, BN, 16], _PLAIN)
    s_smem = gl.allocate_shared_memory(gl.int32, [NP2, BN, 2], _PLAIN)
    rw = gl.minimum(n0 + gl.arange(0, BN, layout=gl.SliceLayout(1, CL)), N - 1)[:, None]
    cw = gl.arange(0, 16, layout=gl.SliceLayout(0, CL))[None, :]
    rs = gl.minimum(n0 + gl.arange(0, BN, layout=gl.SliceLayout(1, TL)), N - 1)[:, None]
    cs = gl.arange(0, 2, layout=gl.SliceLayout(0, TL))[None, :]
    for i in gl.static_range(NPASS):
        kp = kp0 + i
        ok = kp < KP
        async_copy.async_copy_global_to_shared(w_smem.index(i), w_ptr + rw * stride_wn + kp * 16 + cw,
                                               mask=(cw >= 0) & ok, cache_modifier=".cg")
        async_copy.async_copy_global_to_shared(s_smem.index(i), s_ptr + rs * (stride_sn // 2) + kp * 2 + cs,
                                               mask=(cs >= 0) & ok)
        async_copy.commit_group()
    return w_smem, s_smem


@gluon.jit
def _pass_mma(wt, st, bt, acc, AL: gl.constexpr, ASYNC: gl.constexpr):
    """One pass: decode the [BN, 128] weight tile and accumulate its wgmma against bt [NPAD, 128]."""
    if ASYNC:
        # two halves: the second half's decode runs while the first half's wgmma does; the wait
        # names both A halves so that their registers stay untouched until it
        a0, h1 = _a_halves(wt, st, AL)
        acc = warpgroup_mma(a0, bt.slice(0, 64, dim=1).permute((1, 0)), acc, is_async=True)
        a1 = _pairs_to_a(_a_half2(h1), AL)
        acc = warpgroup_mma(a1, bt.slice(64, 64, dim=1).permute((1, 0)), acc, is_async=True)
        acc, a0, a1 = warpgroup_mma_wait(0, deps=[acc, a0, a1])
    else:
        acc = warpgroup_mma(_a_tile(wt, st, AL), bt.permute((1, 0)), acc)
    return acc


@gluon.jit
def _nvfp4_wgmma_kernel(x_ptr, w_ptr, s_ptr, y_ptr, ws_ptr, cnt_ptr, M, N, K, g, stride_wn, stride_sn,
                        NPAD: gl.constexpr, NPASS: gl.constexpr, NP2: gl.constexpr, SPLIT: gl.constexpr,
                        ASYNC: gl.constexpr, PF: gl.constexpr, BN: gl.constexpr, CP: gl.constexpr = 0):
    """x bf16 [M, K], w int32 [N, K/8], s int16 [N, K/32] (scale byte pairs) -> y fp32 [M, N].

    Program (pid_n, pid_k): rows pid_n BN .. + BN - 1 (BN / 16 warps, a warpgroup per 64 rows),
    passes pid_k NPASS .. + NPASS - 1 of 128 K elements. With SPLIT > 1 the K slices meet as in
    nvfp4_gemm's fix-up: partials in the workspace ws [SPLIT, M, N], an arrival counter, the last
    one to arrive sums them."""
    NW: gl.constexpr = BN // 16
    pid_n = gl.program_id(0)
    pid_k = gl.program_id(1)
    n0 = pid_n * BN
    kp0 = pid_k * NPASS
    WB: gl.constexpr = [[16, 0], [32, 0], [64, 0]] if BN == 128 else [[16, 0], [32, 0]]
    WL: gl.constexpr = gl.DistributedLinearLayout(reg_bases=[[0, 1], [0, 2], [8, 0]],
                                                  lane_bases=[[0, 4], [0, 8], [1, 0], [2, 0], [4, 0]],
                                                  warp_bases=WB, block_bases=[], shape=[BN, 16])
    SL: gl.constexpr = gl.DistributedLinearLayout(reg_bases=[[8, 0]],
                                                  lane_bases=[[0, 1], [0, 2], [1, 0], [2, 0], [4, 0]],
                                                  warp_bases=WB, block_bases=[], shape=[BN, 4])
    MMA: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[NW, 1], instr_shape=[16, NPAD, 16])
    AL: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=MMA, k_width=2)
    BS: gl.constexpr = gl.NVMMASharedLayout.get_default_for([NPAD, 128], gl.bfloat16)

    rw = gl.minimum(n0 + gl.arange(0, BN, layout=gl.SliceLayout(1, WL)), N - 1)[:, None]
    cw = gl.arange(0, 16, layout=gl.SliceLayout(0, WL))[None, :]
    rs = gl.minimum(n0 + gl.arange(0, BN, layout=gl.SliceLayout(1, SL)), N - 1)[:, None]
    cs = gl.arange(0, 4, layout=gl.SliceLayout(0, SL))[None, :]
    KP = K // 128
    if CP:
        # every pass's weights in flight at once: one cp.async group per pass into shared memory
        s32 = s_ptr.to(gl.pointer_type(gl.int32), bitcast=True)
        w_smem, s_smem = _copy_all(w_ptr, s32, n0, N, stride_wn, stride_sn, kp0, KP, NPASS, NP2, BN, NW)
    else:
        # the first passes' weights are in flight while the activations are staged
        wt, st = _loads(w_ptr, s_ptr, rw, cw, rs, cs, stride_wn, stride_sn, kp0, KP)
        if PF == 2:
            wt2, st2 = _loads(w_ptr, s_ptr, rw, cw, rs, cs, stride_wn, stride_sn, kp0 + 1, KP)
    b_smem = gl.allocate_shared_memory(gl.bfloat16, [NP2, NPAD, 128], BS)
    _stage_x(x_ptr, b_smem, M, K, kp0, NPAD, NP2, NW)
    fence_async_shared()
    gl.thread_barrier()

    acc = gl.zeros([BN, NPAD], gl.float32, MMA)
    if CP:
        for i in gl.static_range(NPASS):
            async_copy.wait_group(NPASS - 1 - i)
            gl.thread_barrier()      # each pass was copied by other lanes than the ones that read it
            wt = w_smem.index(i).load(WL)
            st = s_smem.index(i)._reinterpret(gl.int16, [BN, 4], _PLAIN).load(SL).to(gl.int32)
            acc = _pass_mma(wt, st, b_smem.index(i), acc, AL, ASYNC)
    else:
        for i in range(NPASS):
            # the loads PF passes ahead are issued before this pass's decode
            wn, sn = _loads(w_ptr, s_ptr, rw, cw, rs, cs, stride_wn, stride_sn, gl.minimum(kp0 + i + PF, KP), KP)
            acc = _pass_mma(wt, st, b_smem.index(i), acc, AL, ASYNC)
            if PF == 2:
                wt = wt2
                st = st2
                wt2 = wn
                st2 = sn
            else:
                wt = wn
                st = sn
    r = n0 + gl.arange(0, BN, layout=gl.SliceLayout(1, MMA))[:, None]
    m = gl.arange(0, NPAD, layout=gl.SliceLayout(0, MMA))[None, :]
    o = m * N + r
    msk = (m < M) & (r < N)
    val = acc * (g * 65536.0)    # the decode leaves 2^-16
    if SPLIT == 1:
        gl.store(y_ptr + o, val, mask=msk)
    else:
        gl.store(ws_ptr + pid_k * M * N + o, val, mask=msk)
        gl.thread_barrier()
        arrived = gl.atomic_add(cnt_ptr + pid_n, 1, sem="acq_rel", scope="gpu")
        if arrived == SPLIT - 1:
            tot = gl.load(ws_ptr + o, mask=msk, other=0.0, cache_modifier=".cg")
            for sk in range(1, SPLIT):
                tot += gl.load(ws_ptr + sk * M * N + o, mask=msk, other=0.0, cache_modifier=".cg")
            gl.store(y_ptr + o, tot, mask=msk)
            gl.atomic_xchg(cnt_ptr + pid_n, 0)


def nvfp4_w4a16_wgmma(x: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor, global_scale: float,
                      config: tuple = (1, 16, 0, 1, 64)) -> torch.Tensor:
    """config: (K split, NPAD 8 or 16, async wgmma halves, loads PF passes ahead, rows per program,
    1 = every pass's weights copied to shared memory up front by cp.async (PF then unused))."""
    split, npad, asyn, pf, *rest = config
    bn = rest[0] if rest else 64
    cp = rest[1] if len(rest) > 1 else 0
    m, k = x.shape
    n = packed.shape[0]
    assert m <= npad and k % 128 == 0
    y = torch.empty((m, n), dtype=torch.float32, device=x.device)
    grid = (triton.cdiv(n, bn), split)
    ws, cnt = split_k_workspace(y, split, grid[0])
    w = packed.view(torch.int32)
    s = scales.view(torch.int16)
    npass = triton.cdiv(k // 128, split)
    _nvfp4_wgmma_kernel[grid](x, w, s, y, ws, cnt, m, n, k, float(global_scale), w.stride(0), s.stride(0),
                              NPAD=npad, NPASS=npass, NP2=triton.next_power_of_2(npass), SPLIT=split, ASYNC=asyn,
                              PF=pf, BN=bn, CP=cp, num_warps=bn // 16)
    return y
