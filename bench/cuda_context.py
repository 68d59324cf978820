"""What a CUDA context takes from a GPU's memory before any allocation, and how much of it is the
local-memory (stack) reservation, which scales with the GPU's resident threads.

The driver backs every thread that can be resident at once with the per-thread stack
(``CU_LIMIT_STACK_SIZE``, 1 KiB by default): SMs x max resident threads per SM x stack bytes
(CUDA Driver API, cuCtxSetLimit). This script creates the context through torch, as the engines
do, reads total - free (the whole context), then raises the stack limit step by step and reads
the free memory again: each step should cost SMs x threads per SM x the step.

    python bench/cuda_context.py [--json out.json]
"""

from __future__ import annotations

import argparse
import ctypes
import json

import torch

CU_LIMIT_STACK_SIZE = 0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    free0, total = torch.cuda.mem_get_info()   # creates the primary context, as engines do
    p = torch.cuda.get_device_properties(0)
    threads = p.multi_processor_count * p.max_threads_per_multi_processor
    cuda = ctypes.CDLL("libcuda.so.1")
    val = ctypes.c_size_t()
    assert cuda.cuCtxGetLimit(ctypes.byref(val), CU_LIMIT_STACK_SIZE) == 0
    stack0 = val.value
    rows = []
    prev_free, prev_stack = free0, stack0
    for stack in (2 * stack0, 4 * stack0, 8 * stack0, stack0):
        assert cuda.cuCtxSetLimit(CU_LIMIT_STACK_SIZE, ctypes.c_size_t(stack)) == 0
        free, _ = torch.cuda.mem_get_info()
        rows.append({"stack_bytes": stack, "free_bytes": free, "delta_bytes": prev_free - free,
                     "predicted_delta_bytes": threads * (stack - prev_stack)})
        prev_free, prev_stack = free, stack
    out = {"gpu": p.name, "sms": p.multi_processor_count, "threads_per_sm": p.max_threads_per_multi_processor,
           "total_bytes": total, "context_bytes": total - free0, "default_stack_bytes": stack0,
           "stack_reservation_bytes": threads * stack0, "steps": rows}
    print(f"{p.name}: {p.multi_processor_count} SMs x {p.max_threads_per_multi_processor} threads; total "
          f"{total / 2**30:.3f} GiB, context {out['context_bytes'] / 2**20:.1f} MiB; default stack {stack0} B "
          f"-> reservation {threads * stack0 / 2**20:.1f} MiB predicted")
    for r in rows:
        print(f"  stack -> {r['stack_bytes']:6d} B: free fell by {r['delta_bytes'] / 2**20:8.1f} MiB, "
              f"predicted {r['predicted_delta_bytes'] / 2**20:8.1f} MiB")
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(out, fh, indent=1)


if __name__ == "__main__":
    main()
