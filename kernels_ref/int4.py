"""Symmetric int4 group quantization and compressed-tensors ``pack-quantized`` int32 packing.

Packing (compressed-tensors ``compressors/pack_quantized/helpers.py`` ``pack_to_int32``):
values ``q`` in [-8, 7] are stored as ``q + 8``; int32 word j of a row holds elements 8j..8j+7,
element 8j+k in bits [4k, 4k+3]; rows are zero-padded to a multiple of 8 elements.
"""

from __future__ import annotations

import numpy as np


def quantize_int4_sym(w: np.ndarray, group_size: int, scale_dtype=np.float16) -> tuple[np.ndarray, np.ndarray]:
    """Per-group symmetric int4 (compressed-tensors ``calculate_qparams``: scale = amax / 7.5,
    ``q = clamp(round(x / scale), -8, 7)``). Returns (q int8 [..., in], scales [..., in/group])."""
    w = np.asarray(w, dtype=np.float32)
    if w.shape[-1] % group_size:
        raise ValueError(f"last dimension {w.shape[-1]} is not a multiple of group size {group_size}")
    g = w.reshape(w.shape[:-1] + (-1, group_size))
    amax = np.max(np.abs(g), axis=-1)
    scale = (amax / np.float32(7.5)).astype(scale_dtype)
    s32 = scale.astype(np.float32)
    s32 = np.where(s32 == 0, np.float32(1.0), s32)
    q = np.clip(np.round(g / s32[..., None]), -8, 7).astype(np.int8)
    return q.reshape(w.shape), scale


def pack_int4_to_int32(q: np.ndarray) -> np.ndarray:
    """int4 values [..., n] in [-8, 7] -> int32 words [..., ceil(n/8)]."""
    q = np.asarray(q, dtype=np.int8)
    n = q.shape[-1]
    pad = (-n) % 8
    u = (q.astype(np.int16) + 8).astype(np.uint32)
    if pad:
        u = np.concatenate([u, np.zeros(u.shape[:-1] + (pad,), dtype=np.uint32)], axis=-1)
    u = u.reshape(u.shape[:-1] + (-1, 8))
    shifts = (np.arange(8, dtype=np.uint32) * 4)
    words = np.bitwise_or.reduce(u << shifts, axis=-1)
    return words.astype(np.uint32).view(np.int32)


def unpack_int32_to_int4(words: np.ndarray, n: int) -> np.ndarray:
    """Inverse of :func:`pack_int4_to_int32`: int32 [..., w] -> int8 [..., n] in [-8, 7]."""
    u = np.asarray(words, dtype=np.int32).view(np.uint32)
    shifts = (np.arange(8, dtype=np.uint32) * 4)
    vals = ((u[..., None] >> shifts) & 0xF).astype(np.int8) - 8
    return vals.reshape(u.shape[:-1] + (-1,))[..., :n]


def pack_int8_to_int32(q: np.ndarray) -> np.ndarray:
    """int8 values [..., n] (n a multiple of 4) -> int32 words [..., n/4]: compressed-tensors'
    pack-quantized 8-bit layout (``pack_to_int32``: value + 128 as an unsigned byte, element i of a
    word at bits 8i), i.e. the offset bytes in order, read as little-endian words."""
    q = np.asarray(q, dtype=np.int8)
    if q.shape[-1] % 4:
        raise ValueError(f"{q.shape[-1]} int8 values do not fill int32 words")
    u = (q.astype(np.int16) + 128).astype(np.uint8)
    return np.ascontiguousarray(u).view("<i4")


def unpack_int32_to_int8(words: np.ndarray, n: int) -> np.ndarray:
    """Inverse of :func:`pack_int8_to_int32`: int32 [..., n/4] -> int8 [..., n]."""
    u = np.ascontiguousarray(np.asarray(words, dtype="<i4")).view(np.uint8)
    return (u.astype(np.int16) - 128).astype(np.int8)[..., :n]
