"""llama.cpp partial offload (``-ngl``, ``--n-cpu-moe``) and the solves users ask for: the largest
context that fits, how many parallel sequences fit at a context, how many layers fit on the GPU.

Offload follows llama.cpp at 0c1e57098 (the copy llama-cpp-python 0.3.36 vendors):

- ``llama_model::load_tensors`` (src/llama-model.cpp L1589-1610): of the ``n_layer`` repeating layers
  and the output layer (index ``n_layer``), those from ``i_gpu_start = max(n_layer + 1 - ngl, 0)``
  go to the GPU, so ``-ngl N`` offloads the output layer first, then the last layers; the input
  layer (token embedding) always stays on the CPU ("there is very little benefit to offloading the
  input layer"); a tied model's output is a duplicate of the embedding (``TENSOR_DUPLICATED``)
  placed with the output layer.
- ``--n-cpu-moe N`` (common/arg.cpp L2767): buffer overrides keep the expert tensors
  (``ffn_(up|down|gate|gate_up)_exps``) of layers 0..N-1 in CPU memory.
- The KV cache of each layer lives with that layer (``offload_kqv``, the default).
- Several GPUs (``-ts, --tensor-split N0,N1,...`` under the default ``--split-mode layer``,
  src/llama-model.cpp L1556-1598): the proportions are summed into cumulative split points
  normalised to 1 (float32), and offloaded layer ``il`` (the output layer too) goes to the first
  device whose split point exceeds ``(il - i_gpu_start) / act_gpu_layers``
  (``std::upper_bound``); without ``-ts`` the proportions are each device's free memory, equal for
  identical GPUs. Each device holds its layers' weights and KV cache and its own compute buffer.

The solves re-run :func:`nvfp4tools.estimate.estimate` under bisection, which is exact because
every engine's "fits" is monotone in each quantity (more context, more sequences, more layers on
the GPU never need less GPU memory).
"""

from __future__ import annotations

import bisect
import dataclasses
import struct
from typing import Any, Callable

from .model import ArchInfo, Checkpoint


def _f32(x: float) -> float:
    return struct.unpack("<f", struct.pack("<f", x))[0]


def split_points(proportions: tuple[float, ...]) -> list[float]:
    """llama.cpp's cumulative split points of ``-ts`` PROPORTIONS, in float32 as it computes them."""
    total, points = 0.0, []
    for v in proportions:
        total = _f32(total + _f32(v))
        points.append(total)
    return [_f32(p / total) for p in points]


def layer_split(ckpt: Checkpoint, arch: ArchInfo, ngl: int | None, n_cpu_moe: int,
                tensor_split: tuple[float, ...] | None = None) -> dict[str, Any]:
    """Which layers and bytes llama.cpp places on the GPU(s) for ``-ngl NGL`` (None: all),
    ``--n-cpu-moe N_CPU_MOE`` and ``-ts TENSOR_SPLIT`` (None: one GPU): per-layer GPU flags and
    device indices, the output layer's device, the weight bytes each device holds, and the bytes
    of the weights kept on the CPU (layers not offloaded, experts of the first n_cpu_moe layers,
    the output when not offloaded, the input embedding when an output matrix is stored)."""
    n = arch.n_layers
    ngl_eff = n + 1 if ngl is None else min(ngl, n + 1)
    start = max(n + 1 - ngl_eff, 0)
    points = split_points(tensor_split) if tensor_split else [1.0]

    def device(il: int) -> int | None:
        if il < start:
            return None
        # std::upper_bound over the split points of float(il - i_gpu_start) / act_gpu_layers
        return min(bisect.bisect_right(points, _f32((il - start) / ngl_eff)), len(points) - 1)

    devices = [device(il) for il in range(n)]
    on_gpu = [d is not None for d in devices]
    output_device = device(n)
    output_on_gpu = output_device is not None
    per_device = [0] * len(points)
    stored_head = any(t.role == "lm_head" for t in ckpt.tensors.values())
    cpu = 0
    cpu_experts = 0
    embed = 0
    for t in ckpt.tensors.values():
        if t.role in ("vision", "projector"):
            continue                                   # llama.cpp loads the vision tower (mmproj) apart
        if t.layer is not None and t.layer < n:
            if not on_gpu[t.layer]:
                cpu += t.nbytes
            elif t.role == "experts" and t.layer < n_cpu_moe:
                cpu += t.nbytes
                cpu_experts += t.nbytes
            else:
                per_device[devices[t.layer]] += t.nbytes
        elif t.role == "lm_head":
            if not output_on_gpu:
                cpu += t.nbytes
        elif t.role == "embedding" and "per_layer" not in t.name:
            embed += t.nbytes
            if stored_head:
                cpu += t.nbytes                        # input layer on the CPU; the output is the stored head
            elif not output_on_gpu:
                cpu += t.nbytes                        # tied: the GPU copy is the output layer's duplicate
    return {"n_gpu_layers": ngl_eff, "n_layers": n, "all_on_gpu": ngl_eff == n + 1 and not n_cpu_moe,
            "layers_on_gpu": sum(on_gpu), "output_on_gpu": output_on_gpu, "on_gpu": on_gpu,
            "n_cpu_moe": n_cpu_moe, "cpu_weight_bytes": cpu, "cpu_expert_bytes": cpu_experts,
            "device": devices, "output_device": output_device, "layer_weight_bytes": per_device}


def _largest(ok: Callable[[int], bool], lo: int, hi: int) -> int | None:
    """The largest x in [lo, hi] with ok(x), for ok monotone (True then False); None if not ok(lo)."""
    if not ok(lo):
        return None
    if ok(hi):
        return hi
    while hi - lo > 1:                                 # ok(lo), not ok(hi)
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if ok(mid) else (lo, mid)
    return lo


def solve(ckpt: Checkpoint, gpu: Any, s: Any, what: str) -> dict[str, Any]:
    """Solve WHAT ("context", "seqs" or "ngl") for CKPT on GPU under S with the other settings as
    given: the largest value whose estimate fits (and that the engine accepts), or None when even
    the smallest does not. ``seqs`` is llama.cpp's ``-np`` (vLLM/SGLang: the whole number of
    concurrent requests of the context the pool holds); ``ngl`` is llama.cpp only."""
    from .errors import UsageError
    from .estimate import estimate

    arch = ckpt.arch
    assert arch is not None

    def fits(**changed: Any) -> bool:
        return estimate(ckpt, gpu, dataclasses.replace(s, **changed), suggest=False).fits

    context = s.context if s.context is not None else min(arch.max_position_embeddings or 8192, 8192)
    if what == "context":
        top = arch.max_position_embeddings or 1 << 20
        best = _largest(lambda c: fits(context=c), 1, top)
        return {"what": "context", "value": best, "max": top,
                "meaning": "the largest --context (tokens per sequence) that fits with the other settings"}
    if what == "seqs":
        if s.engine != "llamacpp":
            r = estimate(ckpt, gpu, dataclasses.replace(s, context=context), suggest=False).report
            v = int(r["capacity"].get("max_concurrency", 0)) if r["fits"] else None
            return {"what": "seqs", "value": v, "context": context,
                    "meaning": f"whole requests of {context} tokens the KV pool holds at once (max_concurrency)"}
        hi = 1
        while hi < 1 << 16 and fits(context=context, max_seqs=hi * 2):
            hi *= 2
        best = _largest(lambda n: fits(context=context, max_seqs=n), 1, hi * 2)
        return {"what": "seqs", "value": best, "context": context,
                "meaning": f"the largest -np whose whole cache ({context} tokens each) fits"}
    if what == "ngl":
        if s.engine != "llamacpp":
            raise UsageError(f"--solve ngl is for --engine llamacpp (vLLM and SGLang keep every layer on the GPU)",
                             hint="use --engine llamacpp, or --solve context|seqs")
        best = _largest(lambda k: fits(n_gpu_layers=k), 0, arch.n_layers + 1)
        return {"what": "ngl", "value": best, "max": arch.n_layers + 1,
                "meaning": "the most layers -ngl can put on the GPU (the output layer counts as one) at the context"}
    raise UsageError(f"--solve {what!r} is not one of context, seqs, ngl", hint="--solve context")
