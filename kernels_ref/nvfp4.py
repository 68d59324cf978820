"""NVFP4 two-level quantization (block 16, E4M3 block scale, fp32 per-tensor scale).

``quantize_nvfp4`` reproduces Model-Optimizer ``NVFP4QTensor.quantize`` (dynamic path) bit for
bit: ``scale_2 = amax(|W|) / (6 * 448)``; ``block = amax(block) / (6 * scale_2)``, zero blocks
set to 1.0, clamped to [2**-9, 448] and cast to E4M3 (``_cast_per_block_scale_to_fp8``); the
weight is divided by ``float(block) * scale_2`` (product in fp32) and rounded with
:func:`~nvfp4tools.kernels_ref.fp4.encode_e2m1`. All arithmetic in float32, as ModelOpt does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .fp4 import decode_e2m1, encode_e2m1, pack_nibbles_hf
from .fp8 import decode_e4m3, encode_e4m3
from .spec import E2M1_MAX, E4M3_MAX, E4M3_MIN_CLAMP, NVFP4_BLOCK


@dataclass(frozen=True)
class NVFP4Tensor:
    """Canonical NVFP4 weight: HF-packed codes, E4M3 block-scale bytes, fp32 multiplier global."""

    packed: np.ndarray        # uint8 [..., out, in/2], element 2i in the low nibble
    block_scale: np.ndarray   # uint8 (E4M3 bytes) [..., out, in/16], linear layout
    global_scale: np.float32  # multiplier (ModelOpt weight_scale_2)


def global_scale_for(amax: float | np.floating) -> np.float32:
    """ModelOpt ``get_weights_scaling_factor_2``: amax / (6 * 448) in fp32."""
    return np.float32(amax) / np.float32(E2M1_MAX * E4M3_MAX)


def quantize_nvfp4(w: np.ndarray, global_scale: np.float32 | None = None) -> NVFP4Tensor:
    """Quantize a float array [..., in] (in % 16 == 0) to NVFP4, bit-exact with ModelOpt."""
    w = np.asarray(w, dtype=np.float32)
    if w.shape[-1] % NVFP4_BLOCK:
        raise ValueError(f"last dimension {w.shape[-1]} is not a multiple of the NVFP4 block size 16")
    if global_scale is None:
        global_scale = global_scale_for(np.max(np.abs(w)) if w.size else 0.0)
    g = np.float32(global_scale)
    blocks = w.reshape(w.shape[:-1] + (-1, NVFP4_BLOCK))
    amax = np.max(np.abs(blocks), axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):  # an all-zero tensor gives 0/0, as in ModelOpt
        scale = amax / (np.float32(E2M1_MAX) * g)
    scale = np.where(scale == 0, np.float32(1.0), scale).astype(np.float32)
    scale_bytes = encode_e4m3(np.clip(scale, E4M3_MIN_CLAMP, E4M3_MAX))
    denom = decode_e4m3(scale_bytes) * g
    with np.errstate(divide="ignore", invalid="ignore"):
        scaled = blocks / denom[..., None]
    codes = encode_e2m1(scaled.reshape(w.shape))
    return NVFP4Tensor(pack_nibbles_hf(codes), scale_bytes, g)


# Every packed byte decodes to a pair of values (low nibble first): one gather per byte instead
# of an unpack followed by a per-element lookup.
_BYTE_PAIRS = np.stack([decode_e2m1(np.arange(256, dtype=np.uint8) & 0x0F),
                        decode_e2m1(np.arange(256, dtype=np.uint8) >> 4)], axis=1).astype(np.float32)


def dequantize_nvfp4(t: NVFP4Tensor) -> np.ndarray:
    """``E2M1(code) * float(block_scale) * global_scale`` as float32 (ModelOpt ``dequantize``:
    ``per_block_scale = scale * double_scale`` first, then times the value)."""
    packed = np.asarray(t.packed, dtype=np.uint8)
    vals = np.take(_BYTE_PAIRS, packed, axis=0)                    # [..., n/2, 2]
    shape = packed.shape[:-1] + (packed.shape[-1] * 2,)
    scale = decode_e4m3(t.block_scale) * np.float32(t.global_scale)
    out = vals.reshape(shape[:-1] + (-1, NVFP4_BLOCK))
    out *= scale[..., None]
    return out.reshape(shape)
