"""``bench``: for each NVFP4 linear shape of a checkpoint, time the GPU backends against cuBLAS bf16
at M = 1, 16, 128 on this GPU (CUDA events via triton.testing.do_bench), with the effective weight
bandwidth and the memory-roofline limit (bf16 bytes / NVFP4 bytes = 2 / 0.5625 = 3.56x)."""

from __future__ import annotations

from typing import Any

from ._version import __version__
from .errors import BackendUnavailable
from .model import Checkpoint

ROOFLINE = 2 / 0.5625


def run_bench(ckpt: Checkpoint, ms: tuple[int, ...] = (1, 16, 128), max_shapes: int = 16) -> dict[str, Any]:
    from nvfp4tools.kernels_ref.gpu.backends import _triton_reason

    why = _triton_reason()
    if why:
        raise BackendUnavailable(f"bench needs a CUDA GPU with torch and triton: {why}")
    import torch
    import triton

    from nvfp4tools.kernels_ref.gpu.nvfp4_gemm import default_config, nvfp4_w4a16_gemm, upload
    from nvfp4tools.tensors import canonical_nvfp4

    shapes: dict[tuple[int, int], Any] = {}
    for t in ckpt.tensors.values():
        if t.scheme.name == "nvfp4" and len(t.shape) == 2 and t.shape not in shapes:
            shapes[t.shape] = t
    rows = []
    for (n, k), t in list(shapes.items())[:max_shapes]:
        c = canonical_nvfp4(ckpt, t)
        gw = upload(c.codes, c.scale_bytes, float(c.global_scale.reshape(-1)[0]))
        wb = gw.w.to(torch.bfloat16)
        for m in ms:
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            t_bf16 = triton.testing.do_bench(lambda: x @ wb.T, return_mode="median")
            t_tri = triton.testing.do_bench(lambda: nvfp4_w4a16_gemm(x, gw.packed, gw.scales, gw.global_scale),
                                            return_mode="median")
            rows.append({"tensor": t.name, "N": n, "K": k, "M": m, "cublas_bf16_us": t_bf16 * 1e3,
                         "triton_us": t_tri * 1e3, "speedup_vs_bf16": t_bf16 / t_tri,
                         "triton_weight_GBps": gw.nbytes / (t_tri * 1e-3) / 1e9, "kernel": default_config(m, n, k)[0],
                         "config": list(default_config(m, n, k)[1])})
    return {"schema": "nvfp4tools/bench/v1", "tool_version": __version__, "source": ckpt.source,
            "device": torch.cuda.get_device_name(0), "roofline_speedup_limit": round(ROOFLINE, 3), "rows": rows}
