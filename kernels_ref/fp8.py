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


def encode_ue4m3_ggml(x: np.ndarray) -> np.ndarray:
    """float32 -> UE4M3 byte as ``ggml_fp32_to_ue4m3`` encodes it: clamp to [0, 448], round half up
    on the first dropped mantissa bit (not to even), saturate at 0x7E, subnormals as
    ``trunc(x * 512 + 0.5)``."""
    x = np.clip(np.asarray(x, dtype=np.float32), 0.0, 448.0).astype(np.float32)
    bits = x.view(np.uint32)
    e = ((bits >> 23) & 0xFF).astype(np.int32) - 127 + 7
    man = ((bits >> 20) & 0x7).astype(np.int32) + ((bits >> 19) & 1).astype(np.int32)
    carry = man > 7
    man = np.where(carry, 0, man)
    e_n = np.where(carry, e + 1, e)
    normal = np.where(e_n >= 15, 0x7E, (e_n << 3) | man)
    sub = np.clip((x * np.float32(512.0) + np.float32(0.5)).astype(np.int32), 0, 7)
    out = np.where(x <= 0, 0, np.where(e <= 0, sub, np.where(e >= 15, 0x7E, normal)))
    return out.astype(np.uint8)
