"""bfloat16 as raw 16-bit patterns (the top half of a float32), kept as uint16 so bytes copy exactly."""

from __future__ import annotations

import numpy as np


def bf16_bits_to_f32(bits: np.ndarray) -> np.ndarray:
    """uint16 bf16 patterns -> float32 (exact)."""
    return (np.asarray(bits).astype(np.uint32) << 16).view(np.float32)


def f32_to_bf16_bits_exact(x: np.ndarray) -> np.ndarray | None:
    """float32 -> uint16 bf16 patterns when every value is a bf16 value (low 16 bits zero); else None."""
    bits = np.ascontiguousarray(x, np.float32).view(np.uint32)
    if np.any(bits & 0xFFFF):
        return None
    return (bits >> 16).astype(np.uint16)


def f32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> uint16 bf16 patterns, round to nearest even; NaN stays a quiet NaN. The rounding
    gguf-py's ``quants.BF16`` applies (and torch's ``.to(torch.bfloat16)``)."""
    bits = np.ascontiguousarray(x, np.float32).view(np.uint32).astype(np.uint64)
    nan = (bits & 0x7FFFFFFF) > 0x7F800000
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    return np.where(nan, ((bits & 0xFFFF0000) | 0x00400000) >> 16, rounded).astype(np.uint16)
