"""How fast can any kernel read the NVFP4 bytes of a layer? The memory floor under the 2.5x target,
measured the way bench/gpu_stream_bench.py times the kernels (every call reads a different copy,
calls replayed from one CUDA graph):

* READ: a kernel that only streams the bytes (contiguous 16-byte loads, grid-stride, xor-reduced,
  one int per program written), best of a sweep of grid sizes, block sizes and warps; for the
  NVFP4 bytes of the layer (codes + block scales) and for its bf16 bytes;
* cuBLAS bf16 at M = 1 (what the target is relative to) and the Triton kernel at M = 1, 16, 128;
* at M = 128 a sweep of the kernel's tiles and split under this timing.

    python bench/gpu_floor.py [--json out.json] [--no-sweep]
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
import triton
import triton.language as tl
from gpu_stream_bench import copies_for, graph_time_us, rotating_copies
from nvfp4tools.kernels_ref.gpu.nvfp4_gemm import (
    default_config,
    nvfp4_w4a16_gemm,
    random_weight,
)

SHAPES = [(8192, 2816), (2816, 8192)]


@triton.jit
def _read(p, out, n_words, BLOCK: tl.constexpr):
    """Stream n_words int32 (grid-stride over BLOCK-word tiles) and keep one xor per program."""
    pid = tl.program_id(0)
    step = tl.num_programs(0) * BLOCK
    acc = tl.zeros((BLOCK,), dtype=tl.int32)
    for start in range(pid * BLOCK, n_words, step):
        offs = start + tl.arange(0, BLOCK)
        acc ^= tl.load(p + offs, mask=offs < n_words, other=0)
    tl.store(out + pid, tl.xor_sum(acc, axis=0))


def read_floor_us(nbytes: int, sms: int) -> tuple[float, tuple]:
    """Best READ time over the sweep for NBYTES (copies beyond L2), and its (programs, BLOCK, warps)."""
    words = nbytes // 4
    copies = copies_for(nbytes)
    bufs = [torch.randint(-2**31, 2**31 - 1, (words,), dtype=torch.int32, device="cuda") for _ in range(copies)]
    out = torch.empty(64 * sms, dtype=torch.int32, device="cuda")
    best = (float("inf"), ())
    for progs in (sms, 2 * sms, 4 * sms, 8 * sms, 16 * sms):
        for block in (1024, 2048, 4096, 8192):
            for warps in (4, 8):
                if block < warps * 32 * 4:
                    continue
                t = graph_time_us([lambda b=b: _read[(progs,)](b, out, words, BLOCK=block, num_warps=warps)
                                   for b in bufs])
                best = min(best, (t, (progs, block, warps)))
    return best


def _space(m: int, k: int):
    """The MMA kernel's configs (the M = 1 GEMV kernel has its own sweep: bench/gpu_gemv.py)."""
    if m <= 16:
        for bn in (32, 64, 128):
            for bk in (64, 128, 256, 512):
                blocks = k // bk
                for split in sorted({1, 2, 3, 4, 6, 8, 11, 16, blocks}):
                    if split > blocks or k % bk:
                        continue
                    for warps in (2, 4):
                        for stages in (2, 3, 4):
                            yield (16, bn, bk, split, warps, stages, 2, 1)
    else:
        for swap in (0, 1):
            for bm in (64, 128):
                for bn in (64, 128):
                    for bk in (64, 128):
                        for split in (1, 2, 3, 4):
                            for warps in (4, 8):
                                for stages in (3, 4):
                                    yield (bm, bn, bk, split, warps, stages, 2, swap)


def sweep(row: dict, m: int, n: int, k: int, gw, qs) -> None:
    """The kernel's tiles and split under graph timing (gpu_tune.py sweeps under do_bench)."""
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    ref = nvfp4_w4a16_gemm(x, gw.packed, gw.scales, gw.global_scale)
    res = []
    for cfg in _space(m, k):
        try:
            y = nvfp4_w4a16_gemm(x, gw.packed, gw.scales, gw.global_scale, poison=True, config=cfg)
            if not torch.allclose(y, ref, rtol=1e-2, atol=1e-2 * ref.abs().max().item()):
                continue
            t = graph_time_us([lambda p=p, s=s, c=cfg: nvfp4_w4a16_gemm(x, p, s, gw.global_scale, config=c)
                               for p, s in qs], replays=10)
        except Exception:  # noqa: BLE001  (out of shared memory, say)
            continue
        res.append((t, cfg))
    res.sort()
    row[f"sweep_M{m}"] = res[:8]
    print(f"  M={m} MMA-kernel sweep ({len(res)} configs, graph timing), default {default_config(m, n, k, in_graph=True)}: "
          f"{row[f'triton_M{m}_us']:.1f} us; best:")
    for t, cfg in res[:5]:
        print(f"    {t:6.1f} us = {row[f'bf16_M{m}_us'] / t:4.2f}x bf16  {cfg}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", default=None)
    ap.add_argument("--no-sweep", action="store_true")
    ap.add_argument("--sweep-ms", default="1,16,128", type=lambda v: [int(x) for x in v.split(",")])
    a = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    print(f"device: {torch.cuda.get_device_name(0)} ({sms} SMs), torch {torch.__version__}, triton {triton.__version__}")
    rng = np.random.default_rng(0)
    rows = []
    for n, k in SHAPES:
        gw = random_weight(n, k, rng)
        qbytes, bbytes = gw.nbytes, n * k * 2
        t_rq, cfg_rq = read_floor_us(qbytes, sms)
        t_rb, cfg_rb = read_floor_us(bbytes, sms)
        qs, ws = rotating_copies(gw)
        row = {"N": n, "K": k, "read_nvfp4_us": t_rq, "read_nvfp4_cfg": cfg_rq, "read_bf16_us": t_rb,
               "read_bf16_cfg": cfg_rb}
        for m in (1, 16, 128):
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            row[f"bf16_M{m}_us"] = graph_time_us([lambda wi=wi: torch.matmul(x, wi.T) for wi in ws])
            row[f"triton_M{m}_us"] = graph_time_us([lambda p=p, s=s: nvfp4_w4a16_gemm(x, p, s, gw.global_scale)
                                                    for p, s in qs])
        target = row["bf16_M1_us"] / 2.5
        print(f"\n{n}x{k}: NVFP4 {qbytes / 1e6:.1f} MB, bf16 {bbytes / 1e6:.1f} MB")
        print(f"  READ only, NVFP4 bytes : {t_rq:6.1f} us ({qbytes / t_rq / 1e3:5.0f} GB/s)  best of sweep {cfg_rq}")
        print(f"  READ only, bf16 bytes  : {t_rb:6.1f} us ({bbytes / t_rb / 1e3:5.0f} GB/s)  best of sweep {cfg_rb}")
        for m in (1, 16, 128):
            b, q = row[f"bf16_M{m}_us"], row[f"triton_M{m}_us"]
            print(f"  M={m:<3} cuBLAS bf16 {b:6.1f} us ({bbytes / b / 1e3:5.0f} GB/s) | triton {q:6.1f} us "
                  f"({qbytes / q / 1e3:5.0f} GB/s) = {b / q:4.2f}x")
        print(f"  2.5x at M=1 needs {target:.1f} us; reading the NVFP4 bytes alone takes {t_rq:.1f} us "
              f"({t_rq / target:.0%} of that budget); cuBLAS reaches {t_rb / row['bf16_M1_us']:.0%} of the bf16 "
              f"READ floor, the Triton kernel {t_rq / row['triton_M1_us']:.0%} of the NVFP4 one")
        for m in ([] if a.no_sweep else a.sweep_ms):
            sweep(row, m, n, k, gw, qs)
        rows.append(row)
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    main()
