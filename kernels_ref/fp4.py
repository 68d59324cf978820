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


# -- byte-level repacking between the two NVFP4 layouts (no unpacking to one code per byte) ------
# HF (ModelOpt / compressed-tensors): byte i of a row holds elements 2i (low) and 2i+1 (high).
# GGUF (ggml block_nvfp4.qs): in each 16-element sub-block, byte j holds elements j (low) and j+8
# (high). Per sub-block, HF word w0 (bytes 0-3) holds elements 0-7 and w1 (bytes 4-7) elements 8-15,
# so GGUF byte 2k = lo(w0 byte k) | lo(w1 byte k) << 4 and byte 2k+1 = hi(w0 byte k) | hi(w1 byte k)
# << 4: two 32-bit nibble merges, then the bytes of the two results interleaved by spreading each
# 32-bit word over 64 bits. Whole-array integer operations: ~3x the unpack-and-repack route.
# Little-endian views ('<u4', '<u8') make the byte order explicit.

_LO = np.uint32(0x0F0F0F0F)
_HI = np.uint32(0xF0F0F0F0)
_SPREAD16 = np.uint64(0x0000FFFF0000FFFF)
_SPREAD8 = np.uint64(0x00FF00FF00FF00FF)


def _spread(x: np.ndarray) -> np.ndarray:
    """Bytes b3 b2 b1 b0 of each uint32 -> uint64 0 b3 0 b2 0 b1 0 b0."""
    t = x.astype(np.uint64)
    t = (t | (t << np.uint64(16))) & _SPREAD16
    return (t | (t << np.uint64(8))) & _SPREAD8


def _compact(x: np.ndarray) -> np.ndarray:
    """Inverse of :func:`_spread` (the odd bytes must be zero)."""
    t = (x | (x >> np.uint64(8))) & _SPREAD16
    return ((t | (t >> np.uint64(16))) & np.uint64(0xFFFFFFFF)).astype(np.uint32)


def _rows(a: np.ndarray, what: str) -> tuple[tuple[int, ...], int]:
    half = a.shape[-1]
    if half % 8:
        raise ValueError(f"{what}: row of {2 * half} elements is not a multiple of 16")
    return a.shape[:-1], half


def hf_packed_to_gguf_qs(packed: np.ndarray) -> np.ndarray:
    """HF-packed codes [..., n/2] -> the same codes in GGUF sub-block order [..., n/2] (n % 16 == 0);
    equal to ``pack_nibbles_gguf(unpack_nibbles_hf(packed))``."""
    packed = np.ascontiguousarray(packed, dtype=np.uint8)
    lead, half = _rows(packed, "HF-packed NVFP4")
    w = packed.view("<u4").reshape(lead + (half // 8, 2))
    w0, w1 = w[..., 0], w[..., 1]
    lo = (w0 & _LO) | ((w1 & _LO) << np.uint32(4))
    hi = ((w0 >> np.uint32(4)) & _LO) | (w1 & _HI)
    return np.asarray(_spread(lo) | (_spread(hi) << np.uint64(8)), "<u8").view(np.uint8).reshape(lead + (half,))


def gguf_qs_to_hf_packed(qs: np.ndarray) -> np.ndarray:
    """Inverse of :func:`hf_packed_to_gguf_qs`."""
    qs = np.ascontiguousarray(qs, dtype=np.uint8)
    lead, half = _rows(qs, "GGUF NVFP4 codes")
    q = qs.view("<u8").reshape(lead + (half // 8,))
    lo, hi = _compact(q & _SPREAD8), _compact((q >> np.uint64(8)) & _SPREAD8)
    w = np.empty(lead + (half // 8, 2), "<u4")
    w[..., 0] = (lo & _LO) | ((hi & _LO) << np.uint32(4))
    w[..., 1] = ((lo >> np.uint32(4)) & _LO) | (hi & _HI)
    return w.view(np.uint8).reshape(lead + (half,))


def gguf_nvfp4_blocks(packed: np.ndarray, scale_bytes: np.ndarray) -> np.ndarray:
    """HF-packed codes [..., n/2] and E4M3 block-scale bytes [..., n/16] -> ggml ``block_nvfp4``
    bytes [..., n/64 * 36]: per 64 elements the four UE4M3 scale bytes (sign bit cleared), then the
    32 code bytes (ggml-common.h; llama.cpp conversion/base.py ``_nvfp4_pack``)."""
    qs = hf_packed_to_gguf_qs(packed)
    lead, half = qs.shape[:-1], qs.shape[-1]
    if half % 32:
        raise ValueError(f"row of {2 * half} elements is not a multiple of the GGUF NVFP4 block size (64)")
    out = np.empty(lead + (half // 32, 9), "<u4")
    out[..., 0] = (np.ascontiguousarray(scale_bytes, np.uint8) & 0x7F).view("<u4").reshape(lead + (half // 32,))
    out[..., 1:] = qs.view("<u4").reshape(lead + (half // 32, 8))
    return out.view(np.uint8).reshape(lead + (-1,))


def hf_from_gguf_nvfp4_blocks(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`gguf_nvfp4_blocks`: -> (HF-packed codes [..., n/2], scale bytes [..., n/16])."""
    raw = np.ascontiguousarray(raw, dtype=np.uint8)
    lead = raw.shape[:-1]
    words = raw.view("<u4").reshape(lead + (-1, 9))
    sb = np.ascontiguousarray(words[..., 0]).view(np.uint8).reshape(lead + (-1,))
    qs = np.ascontiguousarray(words[..., 1:]).view(np.uint8).reshape(lead + (-1,))
    return gguf_qs_to_hf_packed(qs), sb
