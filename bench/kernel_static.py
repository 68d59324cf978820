"""The MMA GEMM as Triton compiles it for sm_90a, without a GPU: per config, whether it compiles,
registers and spill bytes a thread (ptxas -v), shared memory, and what the K loop does with its
loads (copied ahead by the pipeliner, or a plain load each K step waits on) and its wgmmas (how
many groups stay in flight). This is how the block scales were found waiting in every K step
(nvfp4_gemm.SCALE_WORDS) and how the sweep's tiles were checked for spills before any GPU time
was spent on them. Needs Triton (the GPU machine's version, 3.6) but no CUDA driver; integer
arguments are specialized as a launch on the given N and K would be (divisible by 16 or not).

    pip install triton==3.6.0   # a scratch environment is enough
    python bench/kernel_static.py [--n 2816 --k 704 --m 128] [--configs 'a,b,...;...'] [--scale-bytes]
                                  [--num-ctas 2]

Without --configs: the default config of every M >= 17 rule at that shape plus the sweep's tiles at
split 2 with each split-K sum (bench/tune_mma.py).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

sys.path.insert(0, os.path.dirname(__file__))
from nvfp4tools.kernels_ref.gpu.nvfp4_gemm import _nvfp4_w4a16_kernel  # noqa: E402

PTXAS = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
INTS = ("M", "N", "K", "K2", "KS", "stride_xm", "stride_wn", "stride_sn", "stride_ym")


def compile_config(cfg: tuple[int, ...], m: int, n: int, k: int, scale_words: bool, num_ctas: int = 1):
    """Compile the kernel as nvfp4_w4a16_gemm would launch it on contiguous [M, K] x and an N x K
    weight (int32 code words; scales as int32 words or bytes). NUM_CTAS > 1 asks for a thread-block
    cluster, the way Triton would share (multicast) the activation tile between neighbouring output
    tiles; the launcher never does."""
    bm, bn, bk, split, warps, stages, decode, swap, tma, reduce = (tuple(cfg) + (0, 0))[:10]
    ks_stride = k // 64 if scale_words else k // 16
    values = {"M": m, "N": n, "K": k, "K2": k // 2, "KS": k // 16, "stride_xm": k, "stride_wn": k // 8,
              "stride_sn": ks_stride, "stride_ym": n}
    sig = {"x_ptr": "*bf16", "w_ptr": "*i32", "s_ptr": "*i32" if scale_words else "*u8", "y_ptr": "*fp32",
           "ws_ptr": "*fp32", "cnt_ptr": "*i32", "g": "fp32", "SPLIT_K": "i32"}
    const = {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "DECODE": decode, "SWAP": swap, "EVEN_K": k % bk == 0,
             "TMA": tma, "REDUCE": reduce, "SCALE_WORDS": int(scale_words)}
    for name in INTS:   # Triton turns an integer argument equal to 1 into a constant
        if values[name] == 1:
            const[name] = 1
        else:
            sig[name] = "i32"
    if split == 1:
        const["SPLIT_K"] = 1
    if tma:
        sig["x_ptr"] = f"tensordesc<bf16[{bm},{bk}]>"
        sig["w_ptr"] = f"tensordesc<i32[{bn},{bk // 8}]>"
    names = list(_nvfp4_w4a16_kernel.arg_names)
    full_sig = {a: sig.get(a, "constexpr") for a in names}
    div16 = [a for a in ("x_ptr", "w_ptr", "s_ptr", "y_ptr", "ws_ptr", "cnt_ptr") if not (tma and a in ("x_ptr", "w_ptr"))]
    div16 += [a for a in INTS if a in sig and values[a] % 16 == 0]
    attrs = {(names.index(a),): [["tt.divisibility", 16]] for a in div16}
    return triton.compile(ASTSource(_nvfp4_w4a16_kernel, full_sig, const, attrs), target=GPUTarget("cuda", 90, 32),
                          options={"num_warps": warps, "num_stages": stages, "num_ctas": num_ctas})


def loop_body(ttgir: str) -> str:
    """The K loop of the kernel's TTGIR: the first scf.for's body."""
    start = ttgir.find("scf.for")
    depth, i = 0, ttgir.find("{", start)
    for j in range(i, len(ttgir)):
        depth += {"{": 1, "}": -1}.get(ttgir[j], 0)
        if depth == 0:
            return ttgir[i:j]
    return ttgir[i:]


def report(compiled) -> dict:
    with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as fh:
        fh.write(compiled.asm["ptx"])
    try:
        err = subprocess.run([PTXAS, "-v", "--gpu-name", "sm_90a", fh.name, "-o", os.devnull],
                             capture_output=True, text=True).stderr
    finally:
        os.unlink(fh.name)
    body = loop_body(compiled.asm["ttgir"])
    waits = [int(v) for v in re.findall(r"warp_group_dot_wait[^{]*\{pendings = (\d+)", body)]
    return {"regs": int(re.search(r"Used (\d+) registers", err).group(1)),
            "spill_bytes": int(re.search(r"(\d+) bytes spill stores", err).group(1)),
            "smem_bytes": compiled.metadata.shared,
            "ahead": body.count("async_copy_global_to_local") + body.count("async_tma_copy"),
            "waited": body.count("tt.load "),
            "wgmma": body.count("warp_group_dot "), "in_flight": max(waits, default=0)}


def default_space(m: int, n: int, k: int) -> list[tuple[int, ...]]:
    from tune_mma import TILES

    out = []
    for bm, bn, warps in TILES:
        for swap, tma in ((0, 0), (0, 1), (1, 0)):
            for reduce in (0, 1):
                out.append((bm, bn, 128 if k % 128 == 0 else 64, 2, warps, 3, 2, swap, tma, reduce))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--m", type=int, default=128)
    ap.add_argument("--n", type=int, default=2816)
    ap.add_argument("--k", type=int, default=704)
    ap.add_argument("--configs", default=None)
    ap.add_argument("--scale-bytes", action="store_true", help="the scales read byte by byte (before SCALE_WORDS)")
    ap.add_argument("--num-ctas", type=int, default=1, help="compile as a cluster of this many CTAs")
    a = ap.parse_args()
    cfgs = ([tuple(int(v) for v in c.split(",")) for c in a.configs.split(";")] if a.configs
            else default_space(a.m, a.n, a.k))
    print(f"N={a.n} K={a.k} M={a.m}, scales as {'bytes' if a.scale_bytes else 'int32 words'}; K loop: loads "
          f"copied ahead / waited on, wgmma groups / most in flight")
    print(f"{'config':40s} {'regs':>4s} {'spill B':>7s} {'smem B':>7s} {'ahead':>5s} {'waited':>6s} "
          f"{'wgmma':>5s} {'in flight':>9s}")
    for c in cfgs:
        try:
            r = report(compile_config(c, a.m, a.n, a.k, not a.scale_bytes, a.num_ctas))
        except Exception as e:  # noqa: BLE001  (a config Triton cannot compile: say so, go on)
            print(f"{','.join(map(str, c)):40s} does not compile: {type(e).__name__}: {str(e).splitlines()[0][:80]}")
            continue
        print(f"{','.join(map(str, c)):40s} {r['regs']:4d} {r['spill_bytes']:7d} {r['smem_bytes']:7d} {r['ahead']:5d} "
              f"{r['waited']:6d} {r['wgmma']:5d} {r['in_flight']:9d}")


if __name__ == "__main__":
    main()
