"""Requantization (``--allow-lossy``): a tensor dequantized and quantized again with the reference
quantizers, its error recorded in the report (:mod:`nvfp4tools.errstats`).

NVFP4 follows ModelOpt bit for bit (kernels_ref/nvfp4.py), including one shared global scale over
the projections engines fuse (see :data:`nvfp4tools.convert.siblings.FUSED_SIBLINGS`); int4 is
compressed-tensors' group-32 symmetric recipe with bf16 scales; Q4_0 is ggml's reference quantizer.
"""

from __future__ import annotations

import numpy as np

from nvfp4tools.errstats import error_report

from .canon import Canon, View
from .plan import Action


def _dequantized(view: View, name: str) -> np.ndarray:
    from nvfp4tools.tensors import dequantize
    return np.asarray(dequantize(view.ckpt, view.ckpt.tensors[name]), np.float32)


def _shared_global(a: Action, view: View, w: np.ndarray):
    from nvfp4tools.kernels_ref.nvfp4 import global_scale_for

    amax = float(np.max(np.abs(w))) if w.size else 0.0
    for n in a.share_global_with:
        s = _dequantized(view, n)
        if s.size:
            amax = max(amax, float(np.max(np.abs(s))))
    return global_scale_for(np.float32(amax))


def quantized(a: Action, view: View, report: list | None, name: str) -> Canon:
    """Source tensor NAME of action A requantized to ``a.quantize_to``, as a canonical tensor
    (its rows in the action's order: permuted where the action permutes)."""
    t = view.ckpt.tensors[name]
    w = _dequantized(view, t.name)
    if a.permute_heads is not None:
        from .canon import llama_permutation, unpermute
        perm = llama_permutation(w.shape[-2], a.permute_heads)
        w = w[..., unpermute(perm) if a.unpermute else perm, :]
    shape = tuple(t.shape)
    if a.quantize_to == "nvfp4":
        from nvfp4tools.kernels_ref.nvfp4 import dequantize_nvfp4, quantize_nvfp4
        # one global per expert for stacked experts, as ModelOpt's per-expert quantizers give
        mats = [w[e] for e in range(w.shape[0])] if w.ndim == 3 else [w]
        shared = _shared_global(a, view, w) if w.ndim == 2 and a.share_global_with else None
        qs = [quantize_nvfp4(m, shared) for m in mats]
        back = np.stack([dequantize_nvfp4(q) for q in qs]).reshape(shape)
        c = Canon(t.name, "nvfp4", shape, packed=np.stack([q.packed for q in qs]).reshape(shape[:-1] + (-1,)),
                  scale_bytes=np.stack([q.block_scale for q in qs]).reshape(shape[:-1] + (-1,)),
                  global_mult=[float(q.global_scale) for q in qs])
    elif a.quantize_to == "int4":
        import ml_dtypes
        from nvfp4tools.kernels_ref.int4 import quantize_int4_sym
        qv, sc = quantize_int4_sym(w, 32, ml_dtypes.bfloat16)
        back = qv.astype(np.float32) * np.repeat(sc.astype(np.float32), 32, axis=-1)
        c = Canon(t.name, "int4", shape, q=qv, group_scales=sc.view(np.uint16), group=32, scale_dtype="BF16")
    elif a.quantize_to == "q4_0":
        from nvfp4tools.kernels_ref.ggml_quants import dequantize_q4_0, q4_0_split, quantize_q4_0
        raw = quantize_q4_0(w)
        back = dequantize_q4_0(raw).reshape(shape)
        codes, d = q4_0_split(raw.reshape(shape[:-1] + (-1,)))
        c = Canon(t.name, "int4", shape, q=(codes.astype(np.int8) - 8).reshape(shape),
                  group_scales=np.ascontiguousarray(d.view(np.uint16)).reshape(shape[:-1] + (-1,)), group=32,
                  scale_dtype="F16")
    elif a.quantize_to == "bf16":   # no 4-bit form exists for the output (an MLA half): dequantized
        from nvfp4tools.kernels_ref.bf16 import bf16_bits_to_f32, f32_to_bf16_bits
        bits = f32_to_bf16_bits(w)
        back = bf16_bits_to_f32(bits).reshape(shape)
        c = Canon(t.name, "raw", shape, array=bits.reshape(shape), dtype="BF16")
    else:
        raise ValueError(f"unknown quantization {a.quantize_to!r}")
    if report is not None:
        report.append(error_report(t.name, w, back, **{"from": t.scheme.name, "to": a.quantize_to}))
    return c
