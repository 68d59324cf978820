"""``bench``: for each NVFP4 linear shape of a checkpoint, time every GPU backend that can be timed
(``Backend.timer``: triton, triton-w4a4, torch; ``Backend.self_timer``: ggml-cuda, llama.cpp's CUDA
kernels on the weight repacked to block_nvfp4) against cuBLAS bf16 at M = 1, 16, 128 on this GPU,
with the effective weight bandwidth and the memory-roofline limit (bf16 bytes / NVFP4 bytes =
2 / 0.5625 = 3.56x).

Two timing methods (``timing``):

* ``graph`` (default), as engines run decode: each call reads another copy of the weight (enough
  copies to exceed the L2 cache several times over, as successive layers of a model do) and the
  calls are replayed from one CUDA graph, so host launch cost drops out. Kernels that decide on a
  launch path while a graph is captured (the MMA GEMM's TMA loads) take it here.
* ``ggml-cuda`` runs on ggml's own stream, outside torch's graph: it is timed by wall clock around
  ``ggml_backend_graph_compute`` of one ggml graph holding a mul_mat per weight copy (``graph``;
  ggml replays it as its own CUDA graph once warm, synchronized at the end) or a single mul_mat
  (``single``; launch and synchronisation included, L2 not flushed), per mul_mat.
* ``single``: ``triton.testing.do_bench`` (median of single calls, L2 flushed before each). This
  includes the host's launch cost, which on a busy host can be several times the kernel's own time
  (bench/RESULTS.md has runs where it read 40 us for an 8 us kernel).
"""

from __future__ import annotations

from typing import Any

from ._version import __version__
from .errors import BackendUnavailable, UsageError
from .model import Checkpoint

ROOFLINE = 2 / 0.5625
L2_MULTIPLE_BYTES = 256 * 2**20     # weight copies per graph: at least this many bytes (H100 L2: 50 MB)
TIMINGS = ("graph", "single")


def graph_time_us(calls: list, replays: int = 20) -> float:
    """Median per-call time (microseconds) of CALLS replayed from one CUDA graph (warmed up first
    on a side stream: compiles and allocator pools stay out of the capture)."""
    import statistics

    import torch

    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for c in calls:
            c()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for c in calls:
            c()
    g.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(replays):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        g.replay()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b) * 1e3 / len(calls))
    return float(statistics.median(times))


def single_time_us(call) -> float:
    import triton

    return float(triton.testing.do_bench(call, return_mode="median")) * 1e3


MAX_COPIES = 256   # the graph replays one call per copy; tiny layers stay in L2 rather than make a huge graph


def copies_for(nbytes: int) -> int:
    """How many copies of a weight of NBYTES the graph method rotates through (the Gemma-4-26B
    layers need 6-241; below ~1 MB a layer's copies fit in L2, as a small model's layers would)."""
    return max(1, min(MAX_COPIES, -(-L2_MULTIPLE_BYTES // max(nbytes, 1))))


def rotating_copies(gw, rotate: bool = True) -> tuple[list, list]:
    """A GpuWeight's NVFP4 parts and its bf16 dequantization, each as the list of copies the graph
    timing rotates through (copies_for; the first is the weight itself): ([(packed, scales), ...],
    [w_bf16, ...]). ROTATE False: the weight alone, once each (single-call timing)."""
    import torch

    wb = gw.w.to(torch.bfloat16)
    nq = copies_for(gw.nbytes) if rotate else 1
    nb = copies_for(wb.numel() * 2) if rotate else 1
    qs = [(gw.packed, gw.scales)] + [(gw.packed.clone(), gw.scales.clone()) for _ in range(nq - 1)]
    return qs, [wb] + [wb.clone() for _ in range(nb - 1)]


def run_bench(ckpt: Checkpoint, ms: tuple[int, ...] = (1, 16, 128), max_shapes: int = 16,
              backends: list | None = None, timing: str = "graph") -> dict[str, Any]:
    """Time BACKENDS (default: every available one; ``ref``, the CPU reference, never) on the
    checkpoint's NVFP4 linear shapes. Backends that cannot be timed are listed in ``not_timed``
    with the reason."""
    from nvfp4tools.kernels_ref import dispatch
    from nvfp4tools.kernels_ref.gpu.backends import _triton_reason

    why = _triton_reason()
    if why:
        raise BackendUnavailable(f"bench needs a CUDA GPU with torch and triton: {why}")
    if timing not in TIMINGS:
        raise ValueError(f"timing {timing!r}: one of {', '.join(TIMINGS)}")
    import torch

    from nvfp4tools.kernels_ref.gpu.nvfp4_gemm import default_config, upload
    from nvfp4tools.tensors import canonical_nvfp4

    backends = [b for b in (dispatch.resolve("all") if backends is None else backends) if b.name != "ref"]
    if not backends:
        raise UsageError("no GPU backend to time (ref is the CPU reference)",
                         hint="--backend all, or a list such as triton,torch")

    def times_itself(b) -> bool:
        return getattr(b, "self_timer", None) is not None

    not_timed = {b.name: b.timer_missing for b in backends if b.timer is None and not times_itself(b)}
    timed = [b for b in backends if b.timer is not None or times_itself(b)]
    for s in dispatch.status():
        if s["name"] != "ref" and not s["available"] and s["name"] not in not_timed:
            not_timed[s["name"]] = s["reason"]

    shapes: dict[tuple[int, int], Any] = {}
    for t in ckpt.tensors.values():
        if t.scheme.name == "nvfp4" and len(t.shape) == 2 and t.shape not in shapes:
            shapes[t.shape] = t
    rows = []
    in_graph = timing == "graph"
    for (n, k), t in list(shapes.items())[:max_shapes]:
        c = canonical_nvfp4(ckpt, t)
        gw = upload(c.codes, c.scale_bytes, float(c.global_scale.reshape(-1)[0]))
        inp = None if c.input_scale is None else float(c.input_scale.reshape(-1)[0])
        qs, ws = rotating_copies(gw, rotate=in_graph)
        for m in ms:
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            t_bf16 = _time([lambda wi=wi: x @ wi.T for wi in ws], timing)
            per: dict[str, Any] = {}
            skipped: dict[str, str] = {}
            for b in timed:
                cases = [dispatch.DeviceCase(x, p, s, gw.global_scale, inp) for p, s in qs]
                try:
                    if times_itself(b):
                        # its own CUDA stream (ggml): the backend times the same weight copies itself
                        us = b.self_timer(cases, timing)
                    else:
                        us = _time([b.timer(c) for c in cases], timing)
                except ValueError as e:
                    skipped[b.name] = str(e)
                    continue
                per[b.name] = {"us": us, "speedup_vs_bf16": t_bf16 / us,
                               "weight_GBps": gw.nbytes / (us * 1e-6) / 1e9}
            kernel, config = default_config(m, n, k, in_graph=in_graph)
            tri = per.get("triton")
            rows.append({"tensor": t.name, "N": n, "K": k, "M": m, "cublas_bf16_us": t_bf16,
                         "triton_us": tri and tri["us"], "speedup_vs_bf16": tri and tri["speedup_vs_bf16"],
                         "triton_weight_GBps": tri and tri["weight_GBps"], "kernel": kernel, "config": list(config),
                         "weight_copies": [len(qs), len(ws)], "backends": per, "skipped": skipped})
        del qs, ws, gw
        torch.cuda.empty_cache()
    return {"schema": "nvfp4tools/bench/v1", "tool_version": __version__, "source": ckpt.source,
            "device": torch.cuda.get_device_name(0), "timing": timing, "roofline_speedup_limit": round(ROOFLINE, 3),
            "backends": [b.name for b in timed], "not_timed": not_timed, "rows": rows}


def _time(calls: list, timing: str) -> float:
    return graph_time_us(calls) if timing == "graph" else single_time_us(calls[0])
