"""Registered GPU backends and their tolerances (relative Frobenius error against the float64
reference ``y_ref = x @ W^T``; ``../shared/docs/peers.md`` section 6 lists upstream practice:
vLLM's NVFP4 GEMM tests use atol/rtol 1e-1, its Marlin FP4 test a mean relative error < 0.04).

* ``torch``: dequantize on the GPU with torch ops, float32 matmul with TF32 off: 1e-5.
* ``triton``: our fused W4A16 kernels (row 0 through the M = 1 GEMV, rows 1-7 through the skinny
  mma.sync kernel, the rest through the MMA GEMM): activations rounded to bf16 (2^-9 relative per element),
  weights exact in bf16 (an E2M1 x E4M3 product has at most 5 significant bits), the global scale
  applied in the fp32 epilogue, fp32 accumulation: 5e-3.
* ``triton-w4a4``: W4A4 emulation: activations quantized to NVFP4 per 16-element block with the
  static input scale on the GPU (ModelOpt's rounding, IEEE division), then the same kernel; the
  quantized activations are exact in bf16, so against the reference over the same quantized
  activations only the fp32 accumulation order differs: 1e-4.
* ``scaled_mm``: torch._scaled_mm with FP4 operands and swizzled block scales: needs FP4 tensor cores
  (compute capability 10.x/12.x); 1e-2.
* ``ggml-cuda`` (llama.cpp's CUDA kernels) is registered in ``kernels_ref/dispatch.py``: it needs no torch.

vLLM's and FlashInfer's NVFP4 GEMMs are not registered: a backend is registered only when it can
run somewhere (bench/RESULTS.md says what wiring them up needs).
"""

from __future__ import annotations

import contextlib

import numpy as np
from nvfp4tools.kernels_ref.dispatch import Backend, DeviceCase, LayerCase, NotRunnable, register


def _cuda_reason() -> str | None:
    try:
        import torch
    except ImportError:
        return "torch is not installed (pip install 'nvfp4tools[gpu]')"
    if not torch.cuda.is_available():
        return "no CUDA device (torch.cuda.is_available() is False)"
    return None


def _dequantizer(device):
    """codes (int64 [N, K]), E4M3 bytes (uint8 [N, K/16]), global (float32 0-d tensor) -> float32
    [N, K] weight, with torch ops only. The table and every input live on DEVICE already, so that
    the call copies nothing from the host (bench replays it from a CUDA graph)."""
    import torch

    lut = torch.tensor([0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.0, -0.5, -1, -1.5, -2, -3, -4, -6],
                       dtype=torch.float32, device=device)

    def dequant(codes, scale_bytes, g):
        n = codes.shape[0]
        sb = scale_bytes.view(torch.float8_e4m3fn).float()
        return (lut[codes].view(n, -1, 16) * sb.unsqueeze(-1)).view(n, -1) * g
    return dequant


def _torch_dequant(case: LayerCase):
    """Canonical parts -> float32 weight on the GPU, with torch ops only."""
    import torch

    dev = "cuda"
    codes = torch.from_numpy(np.array(case.codes, dtype=np.uint8)).to(dev).long()
    sb = torch.from_numpy(np.array(case.scale_bytes, dtype=np.uint8)).to(dev)
    return _dequantizer(dev)(codes, sb, torch.tensor(case.global_scale, dtype=torch.float32, device=dev))


def _torch_x(case: LayerCase):
    import torch
    from nvfp4tools.kernels_ref.gemm import quantize_activations_nvfp4

    x = case.x
    if case.mode == "w4a4" and case.input_scale is not None:
        x = quantize_activations_nvfp4(x, case.input_scale)
    return torch.from_numpy(np.array(x, dtype=np.float32)).to("cuda")


@contextlib.contextmanager
def _no_tf32():
    """float32 matmuls in full float32 for the block, then the caller's setting back: TF32 (10-bit
    mantissas) would put the torch backend's error above its 1e-5 tolerance, and the setting is
    process-wide, so it is not left changed in a program that imports nvfp4tools. Through the
    public precision setting ("highest": no TF32), which also holds the caller's "medium"."""
    import torch

    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)


def _run_torch(case: LayerCase) -> np.ndarray:
    import torch

    if case.codes is None:
        w = torch.from_numpy(np.array(case.w, dtype=np.float32)).to("cuda")
    else:
        w = _torch_dequant(case)
    y = torch.full((case.x.shape[0], w.shape[0]), float("nan"), device="cuda")  # poisoned
    with _no_tf32():
        torch.matmul(_torch_x(case), w.T, out=y)
    torch.cuda.synchronize()
    return y.cpu().numpy()


def _run_triton(case: LayerCase) -> np.ndarray:
    import torch

    from .nvfp4_gemm import _config, nvfp4_w4a16_gemm, pack_for_kernel

    if case.codes is None:
        raise NotRunnable("nvfp4tools' Triton kernels compute NVFP4 weights only; this layer is not NVFP4")
    packed, scales = pack_for_kernel(case.codes, case.scale_bytes)
    x = _torch_x(case).to(torch.bfloat16)
    # the three kernels a deployment runs, each on its own rows of the same activations: row 0
    # through the M = 1 GEMV (the diagonal-MMA one on the largest layers), rows 1-7 through the skinny kernel (2 <= M <= 16), the rest through
    # the MMA kernel (where K % 32 != 0 every part falls back to the MMA kernel)
    m, k = x.shape
    parts = [nvfp4_w4a16_gemm(x[:1].contiguous(), packed, scales, case.global_scale, poison=True)]
    if m > 1:
        parts.append(nvfp4_w4a16_gemm(x[1:8].contiguous(), packed, scales, case.global_scale, poison=True))
    if m > 8:
        rest = x[8:].contiguous()
        parts.append(nvfp4_w4a16_gemm(rest, packed, scales, case.global_scale, poison=True,
                                      config=_config(rest.shape[0], packed.shape[0], k)))
    y = torch.cat(parts)
    torch.cuda.synchronize()
    return y.float().cpu().numpy()


def _run_triton_w4a4(case: LayerCase) -> np.ndarray:
    import torch

    from .nvfp4_gemm import nvfp4_w4a4_gemm, pack_for_kernel

    if case.codes is None:
        raise NotRunnable("the W4A4 emulation computes NVFP4 weights only; this layer is not NVFP4")
    if case.input_scale is None:
        raise ValueError("the triton-w4a4 backend needs a static input scale (W4A4 checkpoints carry one)")
    packed, scales = pack_for_kernel(case.codes, case.scale_bytes)
    x = torch.from_numpy(np.ascontiguousarray(case.x, dtype=np.float32)).cuda()
    y = nvfp4_w4a4_gemm(x, packed, scales, case.global_scale, case.input_scale, poison=True)
    torch.cuda.synchronize()
    return y.float().cpu().numpy()


def _triton_reason() -> str | None:
    why = _cuda_reason()
    if why:
        return why
    try:
        import triton  # noqa: F401
    except ImportError:
        return "triton is not installed"
    return None


def _scaled_mm_reason() -> str | None:
    why = _cuda_reason()
    if why:
        return why
    import torch

    major, minor = torch.cuda.get_device_capability()
    if major not in (10, 12):
        return (f"torch._scaled_mm FP4 needs FP4 tensor cores (compute capability 10.x/12.x); this GPU is "
                f"{major}.{minor}")
    if not hasattr(torch, "float4_e2m1fn_x2"):
        return "this torch has no float4_e2m1fn_x2 dtype"
    return None


def _run_scaled_mm(case: LayerCase) -> np.ndarray:
    import torch
    from nvfp4tools.kernels_ref.fp4 import pack_nibbles_hf
    from nvfp4tools.kernels_ref.nvfp4 import quantize_nvfp4
    from nvfp4tools.kernels_ref.swizzle import swizzle_128x4

    if case.codes is None:
        raise NotRunnable("torch._scaled_mm's FP4 path computes NVFP4 weights only; this layer is not NVFP4")
    n, k = case.codes.shape
    xq = quantize_nvfp4(case.x, np.float32(case.input_scale or 1.0))
    a = torch.from_numpy(xq.packed).cuda().view(torch.float4_e2m1fn_x2)
    b = torch.from_numpy(pack_nibbles_hf(case.codes)).cuda().view(torch.float4_e2m1fn_x2)
    sa = torch.from_numpy(swizzle_128x4(xq.block_scale)).cuda().view(torch.float8_e4m3fn)
    sb = torch.from_numpy(swizzle_128x4(case.scale_bytes)).cuda().view(torch.float8_e4m3fn)
    y = torch._scaled_mm(a, b.t(), sa, sb, out_dtype=torch.float32) * (case.global_scale * float(case.input_scale or 1.0))
    return y.cpu().numpy()


# -- bench: the same backends as device-only calls (see Backend.timer) ------------------------------

def _time_torch(dc: DeviceCase):
    """What the ``torch`` backend does per call: dequantize the packed weight with torch ops (a
    16-entry table, block scales, global), then a float32 matmul with TF32 off."""
    import torch

    dequant = _dequantizer(dc.packed.device)
    x = dc.x.float()
    packed, scales = dc.packed, dc.scales
    g = torch.tensor(dc.global_scale, dtype=torch.float32, device=packed.device)
    n = packed.shape[0]

    def call():
        codes = torch.stack((packed & 0xF, packed >> 4), dim=-1).view(n, -1).long()   # element 2i: low nibble
        with _no_tf32():
            return torch.matmul(x, dequant(codes, scales, g).T)
    return call


def _time_triton(dc: DeviceCase):
    from .nvfp4_gemm import nvfp4_w4a16_gemm

    return lambda: nvfp4_w4a16_gemm(dc.x, dc.packed, dc.scales, dc.global_scale)


def _time_triton_w4a4(dc: DeviceCase):
    from .nvfp4_gemm import nvfp4_w4a4_gemm

    if dc.input_scale is None:
        raise ValueError("no static input scale on this layer (W4A4 needs one)")
    x = dc.x.float().contiguous()
    return lambda: nvfp4_w4a4_gemm(x, dc.packed, dc.scales, dc.global_scale, dc.input_scale)


register(Backend("torch", "torch ops: GPU dequantization, float32 matmul (TF32 off)", 1e-5, _cuda_reason, _run_torch,
                 "float32 accumulation on the GPU", timer=_time_torch))
register(Backend("triton", "nvfp4tools' fused Triton NVFP4 W4A16 kernels: row 0 GEMV, rows 1-7 skinny mma.sync, "
                           "rest MMA GEMM (fp32 accumulate)", 5e-3,
                 _triton_reason, _run_triton, "bf16 activations (2^-9 relative), exact bf16 weights, fp32 epilogue",
                 timer=_time_triton))
register(Backend("triton-w4a4", "W4A4 emulation: activations fake-quantized to NVFP4 on the GPU (ModelOpt-exact "
                 "rounding), then the Triton kernel; both globals in the epilogue", 1e-4, _triton_reason,
                 _run_triton_w4a4, "quantized activations and weights are exact in bf16: only fp32 accumulation "
                 "order differs from the reference over the same NVFP4 activations", activations="w4a4",
                 timer=_time_triton_w4a4))
register(Backend("scaled_mm", "torch._scaled_mm with FP4 operands and 128x4-swizzled block scales", 1e-2,
                 _scaled_mm_reason, _run_scaled_mm, "against the reference over the same NVFP4 activations",
                 activations="w4a4",
                 timer_missing="bench does not time scaled_mm yet: no GPU with FP4 tensor cores was at hand to "
                               "check a timing path on"))
