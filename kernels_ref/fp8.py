"""E4M3FN encode/decode through ml_dtypes (IEEE-style round-to-nearest-even, no infinities,
0x7F/0xFF are NaN): the same conversion as ``torch.Tensor.to(torch.float8_e4m3fn)``."""

from __future__ import annotations

import ml_dtypes
import numpy as np

E4M3 = ml_dtypes.float8_e4m3fn


def encode_e4m3(x: np.ndarray) -> np.ndarray:
    """float32 -> E4M3FN bytes (uint8). Values beyond 448 become NaN: clamp first."""
    return np.asarray(x, dtype=np.float32).astype(E4M3).view(np.uint8)


def decode_e4m3(b: np.ndarray) -> np.ndarray:
    """E4M3FN bytes (uint8) -> float32."""
    return np.asarray(b, dtype=np.uint8).view(E4M3).astype(np.float32)
