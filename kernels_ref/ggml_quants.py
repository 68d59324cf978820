"""GGML block codecs: Q4_0, Q8_0 and the GGUF NVFP4 block (numpy).

Q4_0 (32 elements, 2 + 16 bytes): ``d`` fp16 then 16 bytes, element j in the low nibble of byte j
and element j+16 in the high nibble; ``x = d * (q - 8)``. The reference quantizer (ggml
``quantize_row_q4_0_ref``, mirrored by gguf-py ``Q4_0.quantize_blocks``) takes the element of
largest magnitude ``m`` (sign kept), ``d = m / -8``, ``q = min(15, trunc(x / d + 8.5))`` computed
as ``x * (1/d)`` in float32, so the extreme element maps to code 0.

Q8_0 (32 elements, 2 + 32 bytes): ``d = amax / 127`` (fp16), ``q = round_half_away(x * (1/d))``.

GGUF NVFP4 (64 elements, 4 + 32 bytes): four UE4M3 sub-block scales then 32 bytes of codes in GGUF
nibble order (``kernels_ref.fp4.pack_nibbles_gguf``).
"""

from __future__ import annotations

import numpy as np

from .fp4 import pack_nibbles_gguf, unpack_nibbles_gguf

Q4_0_BLOCK, Q4_0_BYTES = 32, 2 + 16
Q8_0_BLOCK, Q8_0_BYTES = 32, 2 + 32
NVFP4_BLOCK, NVFP4_BYTES = 64, 4 + 32
KVALUES_DOUBLED = np.array([0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12], dtype=np.float32)


def _blocks(x: np.ndarray, n: int) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if x.shape[-1] % n:
        raise ValueError(f"row size ({x.shape[-1]}) is not a multiple of the block size ({n})")
    return x.reshape(-1, n)


def quantize_q4_0(x: np.ndarray) -> np.ndarray:
    """float32 [..., n] -> Q4_0 bytes [..., n/32*18]."""
    b = _blocks(x, Q4_0_BLOCK)
    idx = np.abs(b).argmax(axis=-1)[:, None]
    m = np.take_along_axis(b, idx, axis=-1)
    d = m / np.float32(-8)
    with np.errstate(divide="ignore"):
        inv = np.where(d == 0, np.float32(0), np.float32(1) / d).astype(np.float32)
    q = np.trunc(b * inv + np.float32(8.5)).astype(np.float32).astype(np.uint8).clip(0, 15)
    qs = q[:, :16] | (q[:, 16:] << 4)
    out = np.concatenate([d.astype(np.float16).view(np.uint8), qs], axis=-1)
    return out.reshape(np.shape(x)[:-1] + (-1,))


def dequantize_q4_0(raw: np.ndarray) -> np.ndarray:
    """Q4_0 bytes [..., nb*18] -> float32 [..., nb*32]."""
    raw = np.asarray(raw, dtype=np.uint8)
    b = raw.reshape(-1, Q4_0_BYTES)
    d = b[:, :2].copy().view(np.float16).astype(np.float32)
    qs = b[:, 2:]
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=-1).astype(np.int8) - 8
    return (d * q.astype(np.float32)).reshape(raw.shape[:-1] + (-1,))


def q4_0_split(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q4_0 bytes -> (codes uint8 0..15 per element [.., n], d fp16 per block [.., n/32])."""
    raw = np.asarray(raw, dtype=np.uint8)
    b = raw.reshape(raw.shape[:-1] + (-1, Q4_0_BYTES))
    d = b[..., :2].copy().view(np.float16)[..., 0]
    qs = b[..., 2:]
    codes = np.concatenate([qs & 0x0F, qs >> 4], axis=-1)
    return codes.reshape(raw.shape[:-1] + (-1,)), d


def q4_0_join(codes: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Inverse of :func:`q4_0_split`."""
    c = np.asarray(codes, dtype=np.uint8).reshape(codes.shape[:-1] + (-1, 32))
    qs = c[..., :16] | (c[..., 16:] << 4)
    dd = np.asarray(d, dtype=np.float16)[..., None].view(np.uint8)
    return np.concatenate([dd, qs], axis=-1).reshape(codes.shape[:-1] + (-1,))


def quantize_q8_0(x: np.ndarray) -> np.ndarray:
    b = _blocks(x, Q8_0_BLOCK)
    d = np.abs(b).max(axis=-1, keepdims=True) / np.float32(127)
    with np.errstate(divide="ignore"):
        inv = np.where(d == 0, np.float32(0), np.float32(1) / d).astype(np.float32)
    v = b * inv
    q = (np.sign(v) * np.floor(np.abs(v) + np.float32(0.5))).astype(np.int8)  # roundf: half away from zero
    out = np.concatenate([d.astype(np.float16).view(np.uint8), q.view(np.uint8)], axis=-1)
    return out.reshape(np.shape(x)[:-1] + (-1,))


def dequantize_q8_0(raw: np.ndarray) -> np.ndarray:
    raw = np.asarray(raw, dtype=np.uint8)
    b = raw.reshape(-1, Q8_0_BYTES)
    d = b[:, :2].copy().view(np.float16).astype(np.float32)
    return (d * b[:, 2:].view(np.int8).astype(np.float32)).reshape(raw.shape[:-1] + (-1,))


def nvfp4_to_gguf_blocks(codes: np.ndarray, scale_bytes: np.ndarray) -> np.ndarray:
    """HF-order E2M1 codes [..., n] and E4M3 block-scale bytes [..., n/16] -> GGUF NVFP4 bytes
    [..., n/64*36]. Scale bits are kept (sign bit cleared, UE4M3 has none): lossless."""
    codes = np.asarray(codes, dtype=np.uint8)
    n = codes.shape[-1]
    if n % NVFP4_BLOCK:
        raise ValueError(f"row size ({n}) is not a multiple of the GGUF NVFP4 block size (64)")
    lead = codes.shape[:-1]
    qs = pack_nibbles_gguf(codes).reshape(lead + (n // 64, 32))
    d = (np.asarray(scale_bytes, dtype=np.uint8) & 0x7F).reshape(lead + (n // 64, 4))
    return np.concatenate([d, qs], axis=-1).reshape(lead + (-1,))


def gguf_blocks_to_nvfp4(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`nvfp4_to_gguf_blocks`: -> (codes [..., n], scale bytes [..., n/16])."""
    raw = np.asarray(raw, dtype=np.uint8)
    lead = raw.shape[:-1]
    b = raw.reshape(lead + (-1, NVFP4_BYTES))
    d = b[..., :4].reshape(lead + (-1,))
    codes = unpack_nibbles_gguf(b[..., 4:].reshape(lead + (-1,)))
    return codes, d


def dequantize_gguf_nvfp4(raw: np.ndarray) -> np.ndarray:
    """GGUF NVFP4 bytes -> float32 the way ggml does it: doubled E2M1 x halved UE4M3 scale."""
    from .fp8 import decode_ue4m3_ggml

    codes, d = gguf_blocks_to_nvfp4(raw)
    vals = KVALUES_DOUBLED[codes].reshape(codes.shape[:-1] + (-1, 16))
    return (vals * decode_ue4m3_ggml(d)[..., None]).reshape(codes.shape)
