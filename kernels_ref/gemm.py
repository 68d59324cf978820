"""Reference GEMM ``y = x @ W^T`` with W dequantized exactly (numpy).

* reference: float64 accumulation of the exactly dequantized weight (and activations);
* emulation: float32 accumulation, the arithmetic a GPU kernel's fp32 accumulator approximates;
* W4A16: activations kept as given (bf16/fp32 values); W4A4: activations quantized per 16-element
  block along K to NVFP4 with the layer's static input scale as global (the Blackwell path:
  vLLM ``scaled_fp4_quant(x, 1/input_scale)``, epilogue ``alpha = input_scale * weight_scale_2``);
"""

from __future__ import annotations

import numpy as np

from .nvfp4 import dequantize_nvfp4, quantize_nvfp4


def gemm_reference(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """float64 ``x @ w.T``: x [M, K], w [N, K] -> [M, N]."""
    return np.asarray(x, dtype=np.float64) @ np.asarray(w, dtype=np.float64).T


def gemm_emulated(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """float32 ``x @ w.T`` (fp32 accumulation)."""
    return np.asarray(x, dtype=np.float32) @ np.asarray(w, dtype=np.float32).T


def quantize_activations_nvfp4(x: np.ndarray, input_scale: float) -> np.ndarray:
    """Activations [M, K] -> their NVFP4 fake-quantized float32 values (block 16 along K, global =
    the static input scale as a multiplier)."""
    t = quantize_nvfp4(np.asarray(x, dtype=np.float32), np.float32(input_scale))
    return dequantize_nvfp4(t)
