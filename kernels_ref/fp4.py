"""E2M1 encode/decode and nibble packing (numpy)."""

from __future__ import annotations

import numpy as np

from .spec import E2M1_BOUNDS, E2M1_TIES_UP, E2M1_VALUES

_DECODE = np.array(E2M1_VALUES, dtype=np.float32)
_BOUNDS = np.array(E2M1_BOUNDS, dtype=np.float32)
_TIES = np.array(E2M1_TIES_UP, dtype=np.float32)


def encode_e2m1(x: np.ndarray) -> np.ndarray:
    """float32 -> E2M1 codes (uint8, 0..15), round half to even on the E2M1 grid, saturating at 6.

    Bit-exact with Model-Optimizer ``NVFP4QTensor._cast_fp4``: the magnitude's ordinal is the
    number of bounds strictly below it (``searchsorted``, side left), plus one at the tie points
    0.75/1.75/3.5; the sign bit is set for ``x < 0`` (so ``-0.0`` encodes as 0x0 and a small
    negative that rounds to zero as 0x8).

    Input: any-shape float array. Output: same shape, uint8.
    """
    x = np.asarray(x, dtype=np.float32)
    mag = np.abs(x)
    ordinal = np.searchsorted(_BOUNDS, mag, side="left").astype(np.uint8)
    ties = np.isin(mag, _TIES).astype(np.uint8)
    sign = (x < 0).astype(np.uint8)
    return (sign << 3) + ordinal + ties


def decode_e2m1(codes: np.ndarray) -> np.ndarray:
    """E2M1 codes (0..15) -> float32 (code 8 decodes to -0.0)."""
    return _DECODE[np.asarray(codes, dtype=np.uint8) & 0x0F]


def pack_nibbles_hf(codes: np.ndarray) -> np.ndarray:
    """Pack codes along the last axis, element 2i in the low nibble of byte i.

    The ModelOpt and compressed-tensors layout (``(q[..., 1::2] << 4) | q[..., 0::2]``,
    Model-Optimizer ``NVFP4QTensor.quantize``; compressed-tensors ``pack_fp4_to_uint8``).
    """
    codes = np.asarray(codes, dtype=np.uint8)
    if codes.shape[-1] % 2:
        raise ValueError(f"last dimension {codes.shape[-1]} is odd; cannot pack two codes per byte")
    return (codes[..., 1::2] << 4) | (codes[..., 0::2] & 0x0F)


def unpack_nibbles_hf(packed: np.ndarray) -> np.ndarray:
    """Inverse of :func:`pack_nibbles_hf`: [..., n/2] uint8 -> [..., n] codes."""
    packed = np.asarray(packed, dtype=np.uint8)
    out = np.empty(packed.shape[:-1] + (packed.shape[-1] * 2,), dtype=np.uint8)
    out[..., 0::2] = packed & 0x0F
    out[..., 1::2] = packed >> 4
    return out


def pack_nibbles_gguf(codes: np.ndarray) -> np.ndarray:
    """Pack codes in GGUF order: within each 16-element sub-block, byte j holds element j in the
    low nibble and element j+8 in the high nibble (ggml ``block_nvfp4.qs``; gguf-py
    ``NVFP4.dequantize_blocks``). Input [..., n] (n % 16 == 0) -> [..., n/2]."""
    codes = np.asarray(codes, dtype=np.uint8)
    if codes.shape[-1] % 16:
        raise ValueError(f"last dimension {codes.shape[-1]} is not a multiple of 16")
    sub = codes.reshape(codes.shape[:-1] + (-1, 16))
    packed = (sub[..., :8] & 0x0F) | (sub[..., 8:] << 4)
    return packed.reshape(codes.shape[:-1] + (-1,))


def unpack_nibbles_gguf(packed: np.ndarray) -> np.ndarray:
    """Inverse of :func:`pack_nibbles_gguf`: [..., n/2] -> [..., n] codes."""
    packed = np.asarray(packed, dtype=np.uint8)
    sub = packed.reshape(packed.shape[:-1] + (-1, 8))
    out = np.concatenate([sub & 0x0F, sub >> 4], axis=-1)
    return out.reshape(packed.shape[:-1] + (-1,))
