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


def decode_e4m3_bits(b: np.ndarray) -> np.ndarray:
    """E4M3FN bytes -> float64 by field arithmetic (independent of ml_dtypes; OCP FP8 spec:
    bias 7, subnormals ``m * 2^-9``, S.1111.111 is NaN, no infinities)."""
    b = np.asarray(b, dtype=np.uint8).astype(np.int64)
    sign = np.where(b & 0x80, -1.0, 1.0)
    exp = (b >> 3) & 0xF
    man = (b & 0x7).astype(np.float64)
    val = np.where(exp == 0, man * 2.0 ** -9, (1.0 + man / 8.0) * np.exp2(exp - 7.0))
    val = np.where((b & 0x7F) == 0x7F, np.nan, val)
    return sign * val


def decode_ue4m3_ggml(b: np.ndarray) -> np.ndarray:
    """GGUF NVFP4 scale byte -> float32 as ggml decodes it (``ggml_ue4m3_to_fp32``): the sign bit is
    ignored, 0x00 and 0x7F decode to 0, and the result is halved because ggml's E2M1 table
    (``kvalues_mxfp4``) is doubled. ``E2M1_doubled * decode_ue4m3_ggml(b) == E2M1 * e4m3(b)``."""
    b = np.asarray(b, dtype=np.uint8)
    exp = ((b >> 3) & 0xF).astype(np.int32)
    man = (b & 0x7).astype(np.float32)
    raw = np.where(exp == 0, man * np.float32(2.0 ** -9), (1 + man / 8) * np.exp2(exp.astype(np.float32) - 7))
    return np.where((b == 0) | (b == 0x7F), np.float32(0), raw * np.float32(0.5)).astype(np.float32)
