"""Sweep of the MMA GEMM kernel's configs (kernels_ref/gpu/nvfp4_gemm.py, M >= 17): tiles, warps,
stages, K split, swapped operands, with and without TMA loads of the activations and code words
(config entry 9), the search behind ``_config``'s M >= 17 defaults. Each config's output is
checked against float64 first, then timed beside cuBLAS bf16 and the default config in the same
run, under ``nvfp4tools bench``'s graph timing. The kernels compile in parallel child processes
first (one per CPU core, filling Triton's on-disk cache), so the timed loop only loads them.

    python bench/tune_mma.py [--json out.json] [--shapes 8192x2816,2816x8192] [--ms 128,64] \
        [--budget-s 40] [--ab-scales] [--no-reduce1] [--write-table]
"""

from __future__ import annotations

import argparse
import itertools
import json
import multiprocessing as mp
import os
import random
import time

import torch
from _gpu import graph_time_us, parse_configs, parse_shapes, shape_args, shape_weights
from nvfp4tools.kernels_ref.gpu import tuned
from nvfp4tools.kernels_ref.gpu.nvfp4_gemm import _config, default_config, nvfp4_w4a16_gemm, one_wave


# (BLOCK_M, BLOCK_N, num_warps) tried: small tiles fill the SMs without a K split, wide ones re-read
# the activations less and split K to fill them. Not 128 x 256: its accumulator alone is 128
# registers a thread at 8 warps, and ptxas spills 1.2-1.6 KB a thread (sm_90a, Triton 3.6)
TILES = [(128, 32, 4), (128, 64, 4), (128, 64, 8), (128, 128, 8), (64, 64, 4), (64, 128, 4)]
SPLITS = (1, 2, 3, 4, 5, 6, 8, 10, 12, 16)


def space(m: int, n: int, k: int, sms: int) -> list[tuple[int, ...]]:
    """(BLOCK_M, BLOCK_N, BLOCK_K, SPLIT_K, warps, stages, DECODE, SWAP, TMA, REDUCE) to try at
    M >= 17 on an N x K layer: each tile with K blocks of 64 and 128, two pipeline depths (one for
    128 x 64 at 8 warps), plain / TMA / swapped operands (swapped with TMA is refused by the kernel:
    wrong results, see nvfp4_gemm.py), and up to three K splits among those that put 0.4-2.2
    programs on each SM with at least one K block per slice (the fewest slices, about one program
    per SM, about two), each summed both ways (REDUCE 0 / 1) where the grid is one wave. Configs whose pipelined
    tiles would not fit the H100's 227 KB of shared memory are left out. The order deals the
    tiles out in turn, each tile's configs shuffled (seed 0), so that a --budget-s cut leaves every
    tile a fair sample."""
    per_tile = []
    for bm, bn, warps in TILES:
        if bm > 2 * m:
            continue
        mine = []
        bks = (64, 128)
        stage_set = (3,) if warps == 8 and bn == 64 else (3, 4) if bn <= 64 else (2, 3)
        # swapped operands on 32 weight rows fall below wgmma's 64-row A operand and compile to
        # mma.sync (bench/kernel_static.py): left out, so the budget goes to wgmma configs
        orders = ((0, 0), (0, 1), (1, 0)) if bn >= 64 else ((0, 0), (0, 1))
        for bk, stages, (swap, tma) in itertools.product(bks, stage_set, orders):
            smem = (bm * bk * 2 + bn * bk // 2 + bn * bk // 16) * stages + bn * bk * 2
            if smem > 200 * 1024:
                continue
            tiles = -(-n // bn) * -(-m // bm)
            blocks = -(-k // bk)
            # every slice gets at least one K block (slice sp - 1 starts before the last block)
            ok = [sp for sp in SPLITS if (sp - 1) * -(-blocks // sp) < blocks
                  and (0.4 * sms <= tiles * sp <= 2.2 * sms or (sp == 1 and tiles * 4 >= sms))]
            # at most three: the fewest slices, about one program per SM and about two
            picks = {min(ok, default=None)} | {min(ok, key=lambda sp, w=w: abs(tiles * sp - w * sms), default=None)
                                               for w in (1, 2)}
            for split in sorted(p for p in picks if p is not None):
                # REDUCE 1 only in one wave of one program per SM (the kernel refuses more)
                for reduce in ((0, 1) if split > 1 and one_wave(m, n, (bm, bn, bk, split), sms) else (0,)):
                    mine.append((bm, bn, bk, split, warps, stages, 2, swap, tma, reduce))
        random.Random(0).shuffle(mine)   # a --budget-s cut takes a fair sample of each tile's configs
        per_tile.append(mine)
    out = []
    for i in range(max(map(len, per_tile), default=0)):
        out += [t[i] for t in per_tile if i < len(t)]
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
    # and so are N, K and M, but Triton specializes integer arguments on divisibility by 16 and
    # EVEN_K follows K: each K compiles its own kernels (one shape of each K stands for all)
    seen = {}
    t0 = time.monotonic()
    for m, n, k, cs in jobs:
        for c in cs:
            seen.setdefault((k,) + c[:3] + (min(c[3], 2),) + c[4:], (m, n, k, c))   # split 2 stands for any > 1
    tasks = [(m, n, k, [c]) for m, n, k, c in seen.values()]
    with mp.get_context("spawn").Pool(procs) as pool:
        done = sum(pool.map(_compile, tasks, chunksize=1))
    print(f"compiled {done} of {len(tasks)} kernels in {procs} processes in {time.monotonic() - t0:.0f} s")


def byte_strided(scales: torch.Tensor) -> torch.Tensor:
    """The same block scales in a view the kernel cannot read as words (odd row stride): the
    byte-load path, for --ab-scales."""
    wide = torch.empty((scales.shape[0], scales.shape[1] + 1), dtype=scales.dtype, device=scales.device)
    wide[:, :-1] = scales
    return wide[:, :-1]


def main() -> None:
    ap = argparse.ArgumentParser()
    shape_args(ap)
    ap.add_argument("--ms", default="128")
    ap.add_argument("--top", type=int, default=8)
    ap.add_argument("--configs", default=None, help="these configs only, e.g. '128,64,256,1,4,3,2,0,1;...'")
    ap.add_argument("--budget-s", type=float, default=None,
                    help="stop timing a shape's configs after this many seconds per shape (the ones left are reported)")
    ap.add_argument("--no-reduce1", action="store_true", help="leave out REDUCE 1 (the shared split-K sum)")
    ap.add_argument("--confirm", type=int, default=5,
                    help="time a shape's best this many again, 3x the replays, beside a second cuBLAS timing")
    ap.add_argument("--ab-scales", action="store_true",
                    help="also time the default config with the block scales read byte by byte (the word loads' gain)")
    ap.add_argument("--write-table", action="store_true",
                    help="record each shape's confirmed best (never slower than the rules' config, which is always "
                         "a candidate) for this GPU in kernels_ref/gpu/mma_tuned.json")
    a = ap.parse_args()
    ms = [int(v) for v in a.ms.split(",")]
    shapes_arg = a.shapes or "8192x2816,2816x8192"
    props = torch.cuda.get_device_properties(0)
    sms = props.multi_processor_count
    table = tuned.load_table()
    measured = f"{time.strftime('%Y-%m-%d')} {os.environ.get('NVFP4TOOLS_COMMIT', 'uncommitted tree')}"

    def rules(m, n, k):
        """The config _config's rules give (the table aside), all ten entries spelled out."""
        return tuned.spell_out(_config(m, n, k, in_graph=True, use_table=False))

    def configs(m, n, k):
        cs = [tuned.spell_out(c) for c in parse_configs(a.configs)] if a.configs else space(m, n, k, sms)
        r = rules(m, n, k)
        cs = [r] + [c for c in cs if c != r]
        return [c for c in cs if not (a.no_reduce1 and c[9])]

    precompile([(m, n, k, configs(m, n, k)) for n, k in parse_shapes(shapes_arg) for m in ms])
    rows = []
    for n, k, gw, qs, ws in shape_weights(shapes_arg):
        g = gw.global_scale
        for m in ms:
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            ref = x.double() @ gw.w.double().T
            t_b = graph_time_us([lambda wi=wi: torch.matmul(x, wi.T) for wi in ws])
            t_d = graph_time_us([lambda p=p, s=s: nvfp4_w4a16_gemm(x, p, s, g) for p, s in qs])
            row = {"N": n, "K": k, "M": m, "bf16_us": t_b, "default_us": t_d,
                   "default_config": list(default_config(m, n, k, in_graph=True)[1])}
            if a.ab_scales:
                qb = [(p, byte_strided(s)) for p, s in qs]
                row["default_byte_scales_us"] = graph_time_us([lambda p=p, s=s: nvfp4_w4a16_gemm(x, p, s, g)
                                                               for p, s in qb])
                print(f"{n}x{k} M={m}: default with word-read scales {t_d:.1f} us, byte-read "
                      f"{row['default_byte_scales_us']:.1f} us")
            res = []
            t_shape = time.monotonic()
            left = 0
            for c in configs(m, n, k):
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
            if a.confirm and res:
                t_b2 = graph_time_us([lambda wi=wi: torch.matmul(x, wi.T) for wi in ws], replays=30)
                top = [c for _, c in res[:a.confirm]]
                top += [c for _, c in res if c == rules(m, n, k) and c not in top]   # the rules' config too
                again = [(graph_time_us([lambda p=p, s=s, c=c: nvfp4_w4a16_gemm(x, p, s, g, config=c) for p, s in qs],
                                        replays=30), c) for c in top]
                again.sort()
                row["confirm"] = {"bf16_us": t_b2, "results": [{"us": t, "config": list(c)} for t, c in again]}
                print(f"  confirmed: bf16 {t_b2:.1f} us; " + "; ".join(f"{t:.1f} us = {t_b2 / t:.2f}x {c}"
                                                                    for t, c in again[:3]))
            best_by_tma = {tma: next((r for r in res if r[1][8] == tma), None) for tma in (0, 1)}
            print(f"{n}x{k} M={m}: bf16 {t_b:.1f} us, default {row['default_config']} {t_d:.1f} us "
                  f"= {t_b / t_d:.2f}x; {len(res)} configs" + (f", {left} left untimed (--budget-s)" if left else ""))
            for t, c in res[:a.top]:
                print(f"    {t:6.1f} us = {t_b / t:4.2f}x  {c}")
            for tma, r in best_by_tma.items():
                if r:
                    print(f"  best TMA={tma}: {r[0]:.1f} us = {t_b / r[0]:.2f}x {r[1]}")
            row["results"] = [{"us": t, "config": list(c)} for t, c in res]
            rows.append(row)
            if a.write_table and a.confirm and res:
                t_best, c_best = again[0]
                tuned.record(table, props.name, m, n, k, tuned.TunedEntry(c_best, t_best, t_b2, measured))
                tuned.save_table(table)
                print(f"  recorded for {props.name} M={m}: {c_best} {t_best:.1f} us")
            if a.json:   # after every shape: a run cut short keeps what it measured
                with open(a.json, "w") as fh:
                    json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    main()
