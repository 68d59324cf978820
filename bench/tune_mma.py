"""Sweep of the MMA GEMM kernel's configs (kernels_ref/gpu/nvfp4_gemm.py, M >= 17): tiles, warps,
stages, K split, swapped operands, with and without TMA loads of the activations and code words
(config entry 9), the search behind ``_config``'s M >= 17 defaults. Each config's output is
checked against float64 first, then timed beside cuBLAS bf16 and the default config in the same
run, under ``nvfp4tools bench``'s graph timing. The kernels compile in parallel child processes
first (one per CPU core, filling Triton's on-disk cache), so the timed loop only loads them.

    python bench/tune_mma.py [--json out.json] [--shapes 8192x2816,2816x8192] [--ms 128,64]
"""

from __future__ import annotations

import argparse
import itertools
import json
import multiprocessing as mp
import os
import time

import torch
from _gpu import graph_time_us, parse_configs, parse_shapes, shape_args, shape_weights
from nvfp4tools.kernels_ref.gpu.nvfp4_gemm import default_config, nvfp4_w4a16_gemm


def space(m: int) -> list[tuple[int, ...]]:
    """(BLOCK_M, BLOCK_N, BLOCK_K, SPLIT_K, warps, stages, DECODE, SWAP, TMA) to try at M >= 17
    (swapped operands with TMA are refused by the kernel: wrong results, see nvfp4_gemm.py). Small
    tiles (x32, 64x64) fill the SMs without a K split; 8 warps only on tiles of 8192+ outputs, 4
    up to 16384; configs whose pipelined tiles would not fit the H100's 227 KB of shared memory
    are left out (they fail to launch)."""
    tiles = [(128, 32), (64, 32), (64, 64), (128, 64), (64, 128), (128, 128), (128, 256), (64, 256)]
    out = []
    for (bm, bn), bk, split, warps, stages, swap, tma in itertools.product(
            tiles, (64, 128, 256), (1, 2, 3, 4, 6), (4, 8), (2, 3, 4), (0, 1), (0, 1)):
        smem = (bm * bk * 2 + bn * bk // 2 + bn * bk // 16) * stages + bn * bk * 2
        if (swap and tma) or (warps == 8 and bm * bn < 8192) or (warps == 4 and bm * bn > 16384) \
                or smem > 200 * 1024 or (split == 6 and bn < 128):
            continue
        out.append((bm, bn, bk, split, warps, stages, 2, swap, tma))
    return out


def _compile(job) -> int:
    """Child process: launch each config once on throwaway data (compiles into the disk cache)."""
    m, n, k, configs = job
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    p = torch.randint(0, 255, (n, k // 2), device="cuda", dtype=torch.uint8)
    s = torch.full((n, k // 16), 0x38, device="cuda", dtype=torch.uint8)
    ok = 0
    for c in configs:
        try:
            nvfp4_w4a16_gemm(x, p, s, 1.0, config=c)
            torch.cuda.synchronize()
            ok += 1
        except Exception:  # noqa: BLE001  (out of shared memory, say)
            pass
    return ok


def precompile(jobs: list[tuple[int, int, int, tuple]]) -> None:
    procs = max(1, (os.cpu_count() or 2) - 2)
    # one compile per task: the split is a run-time argument (only split 1 vs > 1 compile apart),
    # and N, K, M are run-time arguments too
    seen = {}
    for m, n, k, cs in jobs:
        for c in cs:
            seen.setdefault(c[:3] + (min(c[3], 2),) + c[4:], (m, n, k))
    tasks = [(*shape, [c]) for c, shape in seen.items()]
    with mp.get_context("spawn").Pool(procs) as pool:
        done = sum(pool.map(_compile, tasks, chunksize=1))
    print(f"compiled {done} of {len(tasks)} kernels in {procs} processes")


def main() -> None:
    ap = argparse.ArgumentParser()
    shape_args(ap)
    ap.add_argument("--ms", default="128")
    ap.add_argument("--top", type=int, default=8)
    ap.add_argument("--configs", default=None, help="these configs only, e.g. '128,64,256,1,4,3,2,0,1;...'")
    ap.add_argument("--budget-s", type=float, default=None,
                    help="stop timing a shape's configs after this many seconds per shape (the ones left are reported)")
    a = ap.parse_args()
    ms = [int(v) for v in a.ms.split(",")]
    shapes_arg = a.shapes or "8192x2816,2816x8192"
    configs = (lambda m: parse_configs(a.configs)) if a.configs else space
    precompile([(m, n, k, configs(m)) for n, k in parse_shapes(shapes_arg) for m in ms])
    rows = []
    for n, k, gw, qs, ws in shape_weights(shapes_arg):
        g = gw.global_scale
        for m in ms:
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            ref = x.double() @ gw.w.double().T
            t_b = graph_time_us([lambda wi=wi: torch.matmul(x, wi.T) for wi in ws])
            t_d = graph_time_us([lambda p=p, s=s: nvfp4_w4a16_gemm(x, p, s, g) for p, s in qs])
            res = []
            t_shape = time.monotonic()
            left = 0
            for c in configs(m):
                if a.budget_s and time.monotonic() - t_shape > a.budget_s:
                    left += 1
                    continue
                try:
                    y = nvfp4_w4a16_gemm(x, gw.packed, gw.scales, g, poison=True, config=c)
                    err = float(((y.double() - ref).norm() / ref.norm()).item())
                    if not err < 5e-3:
                        print(f"  {c}: rel err {err:.2e}, skipped")
                        continue
                    t = graph_time_us([lambda p=p, s=s, c=c: nvfp4_w4a16_gemm(x, p, s, g, config=c) for p, s in qs],
                                      replays=10)
                except Exception as e:  # noqa: BLE001
                    print(f"  {c}: {type(e).__name__}")
                    continue
                res.append((t, c))
            res.sort()
            best_by_tma = {tma: next((r for r in res if r[1][8] == tma), None) for tma in (0, 1)}
            print(f"{n}x{k} M={m}: bf16 {t_b:.1f} us, default {default_config(m, n, k, in_graph=True)} {t_d:.1f} us "
                  f"= {t_b / t_d:.2f}x; {len(res)} configs" + (f", {left} left untimed (--budget-s)" if left else ""))
            for t, c in res[:a.top]:
                print(f"    {t:6.1f} us = {t_b / t:4.2f}x  {c}")
            for tma, r in best_by_tma.items():
                if r:
                    print(f"  best TMA={tma}: {r[0]:.1f} us = {t_b / r[0]:.2f}x {r[1]}")
            rows.append({"N": n, "K": k, "M": m, "bf16_us": t_b, "default_us": t_d,
                         "results": [{"us": t, "config": list(c)} for t, c in res]})
            if a.json:   # after every shape: a run cut short keeps what it measured
                with open(a.json, "w") as fh:
                    json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    main()
