"""GGML block codecs (numpy): quantizers for Q4_0 and Q8_0, the GGUF NVFP4 block's repacking, and
dequantizers for every block type ggml stores in files (:data:`DEQUANTIZERS`, end of the module).

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


# ---------------------------------------------------------------------------------------------------
# Dequantization of every ggml block type ggml stores in files, one function per type.
#
# Each mirrors ggml ``ggml-quants.c`` ``dequantize_row_<type>`` over the block structs of
# ``ggml-common.h`` (field layout written at the top of each function), in float32 with the C
# expression's order of operations, so that the result equals gguf-py ``quants.dequantize`` and
# libggml's own ``dequantize_row_*`` bit for bit (``tests/formats/test_gguf_types.py``; a libggml
# built with FMA contraction could fuse ``d * q - m`` of Q4_1, Q5_1 and the K-quants and round once
# where these round twice). Input: uint8 blocks [nb, type_size]; output: float32 [nb, block_size].
# The IQ grids are data from ``ggml-common.h`` (``iq2xxs_grid`` ...), read from gguf-py's copy so
# that they exist once here.

QK_K = 256
KVALUES_IQ4NL = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], np.float32)
IQ1S_DELTA = np.float32(0.125)   # ggml-common.h IQ1S_DELTA


def _f16(b: np.ndarray, off: int) -> np.ndarray:
    """The fp16 field at byte OFF of every block, as float32 [nb, 1]."""
    return np.ascontiguousarray(b[:, off:off + 2]).view("<f2").astype(np.float32)


def _u16(b: np.ndarray, off: int, n: int) -> np.ndarray:
    return np.ascontiguousarray(b[:, off:off + 2 * n]).view("<u2")


def _nibbles(qs: np.ndarray) -> np.ndarray:
    """[nb, n] bytes -> [nb, 2n]: the low nibbles, then the high nibbles (ggml's ``j`` / ``j + n``)."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=1)


def _bits(b: np.ndarray) -> np.ndarray:
    """[nb, n] bytes -> [nb, 8n] bits, bit j of byte i at 8i + j."""
    return np.unpackbits(b, axis=1, bitorder="little")


def _signs(bits: np.ndarray) -> np.ndarray:
    """Sign bits (1 = negative) -> float32 -1 / +1."""
    return np.float32(1) - np.float32(2) * bits.astype(np.float32)


def ksigns_iq2xs() -> np.ndarray:
    """``ksigns_iq2xs`` (ggml-common.h): 7 stored sign bits plus an eighth that makes the count of
    minus signs even."""
    k = np.arange(128, dtype=np.uint8)
    parity = np.unpackbits(k[:, None], axis=1).sum(axis=1) & 1
    return (k | (parity.astype(np.uint8) << 7)).astype(np.uint8)


_KSIGN_BITS = _bits(ksigns_iq2xs()[:, None])   # [128, 8]
_GRIDS: dict[str, np.ndarray] = {}


def _grid(name: str) -> np.ndarray:
    """ggml-common.h grid NAME (``iq2xxs_grid`` ...) as float32 [n, values], from gguf-py's copy."""
    g = _GRIDS.get(name)
    if g is None:
        from gguf import quants

        cls = getattr(quants, name)
        cls.init_grid()
        g = _GRIDS[name] = np.asarray(cls.grid, np.float32).reshape(cls.grid_shape)
    return g


def _e8m0_half(e: np.ndarray) -> np.ndarray:
    """``ggml_e8m0_to_fp32_half`` (ggml-impl.h): 2^(e-128) built from its bits (E8M0 / 2)."""
    e = e.astype(np.uint32)
    bits = np.where(e < 2, np.uint32(0x00200000) << e, (e - np.uint32(1)) << np.uint32(23))
    return bits.astype(np.uint32).view(np.float32)


def _deq_q4_0(b):   # d f16 | qs[16]
    q = _nibbles(b[:, 2:]).astype(np.int8) - np.int8(8)
    return q.astype(np.float32) * _f16(b, 0)


def _deq_q4_1(b):   # d f16 | m f16 | qs[16]: x*d + m
    return _nibbles(b[:, 4:]).astype(np.float32) * _f16(b, 0) + _f16(b, 2)


def _q5(b, qh_off, qs_off):
    return _nibbles(b[:, qs_off:qs_off + 16]) | (_bits(b[:, qh_off:qh_off + 4]) << 4)


def _deq_q5_0(b):   # d f16 | qh u32 (bit j: fifth bit of element j) | qs[16]
    return (_q5(b, 2, 6).astype(np.int8) - np.int8(16)).astype(np.float32) * _f16(b, 0)


def _deq_q5_1(b):   # d f16 | m f16 | qh u32 | qs[16]
    return _q5(b, 4, 8).astype(np.float32) * _f16(b, 0) + _f16(b, 2)


def _deq_q8_0(b):   # d f16 | qs int8[32]
    return b[:, 2:].view(np.int8).astype(np.float32) * _f16(b, 0)


def _deq_q1_0(b):   # d f16 | qs[16]: bit j set -> +d, clear -> -d
    d = _f16(b, 0) * np.float32(1)   # a signalling-NaN d comes out quiet, as ggml's fp16 -> fp32 does
    return np.where(_bits(b[:, 2:]) == 1, d, -d).astype(np.float32)


def _deq_q2_k(b):   # scales[16] (low 4 bits scale, high 4 min) | qs[64] | d f16 | dmin f16
    nb = b.shape[0]
    sc = b[:, :16].reshape(nb, 2, 4, 2, 1)                       # [n/128, shift j, half h]
    dl = _f16(b, 80).reshape(nb, 1, 1, 1, 1) * (sc & 0xF).astype(np.float32)
    ml = _f16(b, 82).reshape(nb, 1, 1, 1, 1) * (sc >> 4).astype(np.float32)
    qs = b[:, 16:80].reshape(nb, 2, 1, 32)                       # 32 bytes per 128 elements
    q = ((qs >> np.array([0, 2, 4, 6], np.uint8)[:, None]) & 3).reshape(nb, 2, 4, 2, 16)
    return (dl * q.astype(np.float32) - ml).reshape(nb, QK_K)


def _deq_q3_k(b):   # hmask[32] | qs[64] | scales[12] (16 x 6 bits) | d f16
    nb = b.shape[0]
    s = b[:, 96:108]
    k = np.arange(16)
    low = (s[:, k % 8] >> (4 * (k // 8)).astype(np.uint8)) & 0xF
    high = (s[:, 8 + k % 4] >> (2 * (k // 4)).astype(np.uint8)) & 3
    sc = (low | (high << 4)).astype(np.int8) - np.int8(32)
    dl = (_f16(b, 108) * sc.astype(np.float32)).reshape(nb, 2, 4, 2, 1)   # [n/128, j, half]
    ql = (b[:, 32:96].reshape(nb, 2, 1, 32) >> np.array([0, 2, 4, 6], np.uint8)[:, None]) & 3
    # the high bit of element (n, j, l) is bit 4n + j of hmask[l]; a clear bit subtracts 4
    hm = (b[:, None, None, :32] >> np.arange(8, dtype=np.uint8).reshape(2, 4, 1)) & 1
    q = ql.astype(np.int8) - ((hm ^ 1) << 2).astype(np.int8)
    return (dl * q.reshape(nb, 2, 4, 2, 16).astype(np.float32)).reshape(nb, QK_K)


def _scale_min_k4(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``get_scale_min_k4`` for j = 0..7 of 12 packed bytes -> (scale, min), 6 bits each."""
    lo, hi = s[:, :4], s[:, 4:8]
    sc = np.concatenate([lo & 63, (s[:, 8:12] & 0xF) | ((lo >> 6) << 4)], axis=1)
    mn = np.concatenate([hi & 63, (s[:, 8:12] >> 4) | ((hi >> 6) << 4)], axis=1)
    return sc, mn


def _deq_q4_k(b):   # d f16 | dmin f16 | scales[12] | qs[128]: per 64 values, 32 low then 32 high nibbles
    nb = b.shape[0]
    sc, mn = _scale_min_k4(b[:, 4:16])
    d = (_f16(b, 0) * sc.astype(np.float32)).reshape(nb, 4, 2, 1)
    m = (_f16(b, 2) * mn.astype(np.float32)).reshape(nb, 4, 2, 1)
    qs = b[:, 16:].reshape(nb, 4, 1, 32)
    q = (qs >> np.array([0, 4], np.uint8)[:, None]) & 0xF
    return (d * q.astype(np.float32) - m).reshape(nb, QK_K)


def _deq_q5_k(b):   # d f16 | dmin f16 | scales[12] | qh[32] | qs[128]
    nb = b.shape[0]
    sc, mn = _scale_min_k4(b[:, 4:16])
    d = (_f16(b, 0) * sc.astype(np.float32)).reshape(nb, 4, 2, 1)
    m = (_f16(b, 2) * mn.astype(np.float32)).reshape(nb, 4, 2, 1)
    ql = (b[:, 48:].reshape(nb, 4, 1, 32) >> np.array([0, 4], np.uint8)[:, None]) & 0xF
    # fifth bit of element (group g, half h, l): bit 2g + h of qh[l]
    qh = (b[:, None, None, 16:48] >> np.arange(8, dtype=np.uint8).reshape(4, 2, 1)) & 1
    return (d * (ql | (qh << 4)).astype(np.float32) - m).reshape(nb, QK_K)


def _deq_q6_k(b):   # ql[128] | qh[64] | scales int8[16] | d f16: y = d * sc * q
    nb = b.shape[0]
    ql = b[:, :128].reshape(nb, 2, 2, 32)                        # [n/128, l/32 (+32), l]
    qh = b[:, 128:192].reshape(nb, 2, 1, 32)
    low = np.stack([ql[:, :, 0] & 0xF, ql[:, :, 1] & 0xF, ql[:, :, 0] >> 4, ql[:, :, 1] >> 4], axis=2)
    high = (qh >> np.array([0, 2, 4, 6], np.uint8)[:, None]) & 3
    q = ((low | (high << 4)).astype(np.int8) - np.int8(32)).reshape(nb, 2, 4, 2, 16)
    d = (_f16(b, 208) * b[:, 192:208].view(np.int8).astype(np.float32)).reshape(nb, 2, 4, 2, 1)
    return (d * q.astype(np.float32)).reshape(nb, QK_K)


def _deq_iq2_xxs(b):   # d f16 | 8 x (u32 four grid indices, u32 4 x 7 sign bits + 4-bit scale)
    nb = b.shape[0]
    aux = np.ascontiguousarray(b[:, 2:]).view("<u4").reshape(nb, 8, 2)
    db = _f16(b, 0).reshape(nb, 1) * (np.float32(0.5) + (aux[:, :, 1] >> 28).astype(np.float32)) * np.float32(0.25)
    grid = _grid("IQ2_XXS")[b[:, 2:].reshape(nb, 8, 8)[:, :, :4]]                    # [nb, 8, 4, 8]
    sidx = (aux[:, :, 1:2] >> np.array([0, 7, 14, 21], np.uint32)) & 127
    return (db[:, :, None, None] * grid * _signs(_KSIGN_BITS[sidx])).reshape(nb, QK_K)


def _deq_iq2_xs(b):   # d f16 | qs u16[32] (9-bit grid index, 7-bit sign index) | scales[8] (two 4-bit)
    nb = b.shape[0]
    qs = _u16(b, 2, 32).reshape(nb, 8, 4)
    s = b[:, 66:74]
    db = _f16(b, 0) * (np.float32(0.5) + _nibbles_pairs(s).astype(np.float32)) * np.float32(0.25)
    grid = _grid("IQ2_XS")[qs & 511]
    signs = _signs(_KSIGN_BITS[qs >> 9])
    return (db.reshape(nb, 8, 2, 1, 1) * (grid * signs).reshape(nb, 8, 2, 2, 8)).reshape(nb, QK_K)


def _nibbles_pairs(s: np.ndarray) -> np.ndarray:
    """[nb, n] bytes -> [nb, 2n]: low then high nibble of each byte, interleaved (scale of group
    2i then 2i + 1)."""
    return np.stack([s & 0xF, s >> 4], axis=2).reshape(s.shape[0], -1)


def _deq_iq2_s(b):   # d f16 | qs[32] grid low bytes | signs[32] | qh[8] (2 high bits x 4) | scales[8]
    nb = b.shape[0]
    qh = (b[:, 66:74, None] >> np.array([0, 2, 4, 6], np.uint8)) & 3
    idx = b[:, 2:34].reshape(nb, 8, 4).astype(np.uint16) | (qh.astype(np.uint16) << 8)
    db = _f16(b, 0) * (np.float32(0.5) + _nibbles_pairs(b[:, 74:82]).astype(np.float32)) * np.float32(0.25)
    vals = _grid("IQ2_S")[idx] * _signs(_bits(b[:, 34:66])).reshape(nb, 8, 4, 8)
    return (db.reshape(nb, 8, 2, 1, 1) * vals.reshape(nb, 8, 2, 2, 8)).reshape(nb, QK_K)


def _deq_iq3_xxs(b):   # d f16 | qs[64] grid indices | 8 x u32 (4 x 7 sign bits + 4-bit scale)
    nb = b.shape[0]
    aux = np.ascontiguousarray(b[:, 66:98]).view("<u4")                             # [nb, 8]
    db = _f16(b, 0) * (np.float32(0.5) + (aux >> 28).astype(np.float32)) * np.float32(0.5)
    grid = _grid("IQ3_XXS")[b[:, 2:66]].reshape(nb, 8, 4, 8)                         # two grid4 per 8 values
    sidx = (aux[:, :, None] >> np.array([0, 7, 14, 21], np.uint32)) & 127
    return (db[:, :, None, None] * grid * _signs(_KSIGN_BITS[sidx])).reshape(nb, QK_K)


def _deq_iq3_s(b):   # d f16 | qs[64] | qh[8] (ninth index bit) | signs[32] | scales[4]
    nb = b.shape[0]
    idx = b[:, 2:66].astype(np.uint16) | (_bits(b[:, 66:74]).astype(np.uint16) << 8)
    sc = _nibbles_pairs(b[:, 106:110])                                               # [nb, 8]
    db = _f16(b, 0) * (1 + 2 * sc).astype(np.float32)
    vals = _grid("IQ3_S")[idx].reshape(nb, 8, 32) * _signs(_bits(b[:, 74:106])).reshape(nb, 8, 32)
    return (db[:, :, None] * vals).reshape(nb, QK_K)


def _deq_iq1_s(b):   # d f16 | qs[32] | qh u16[8] (3 x 3 index bits, 3-bit scale, delta sign)
    nb = b.shape[0]
    qh = _u16(b, 34, 8)
    dl = _f16(b, 0) * (2 * ((qh >> 12) & 7) + 1).astype(np.float32)
    delta = np.where(qh & 0x8000, -IQ1S_DELTA, IQ1S_DELTA).astype(np.float32)
    high = (qh[:, :, None] >> np.array([0, 3, 6, 9], np.uint16)) & 7
    idx = b[:, 2:34].reshape(nb, 8, 4).astype(np.uint16) | (high << 8)
    vals = _grid("IQ1_S")[idx] + delta[:, :, None, None]
    return (dl[:, :, None, None] * vals).reshape(nb, QK_K)


def _deq_iq1_m(b):   # qs[32] | qh[16] | scales u16[4] (3-bit scales; d f16 in their top nibbles)
    nb = b.shape[0]
    sc = _u16(b, 48, 4)
    dbits = (sc[:, 0] >> 12) | ((sc[:, 1] >> 8) & 0x00F0) | ((sc[:, 2] >> 4) & 0x0F00) | (sc[:, 3] & 0xF000)
    d = dbits.astype(np.uint16).view(np.float16).astype(np.float32)[:, None]
    s3 = (sc[:, :, None] >> np.array([0, 3, 6, 9], np.uint16)) & 7                   # [nb, 4, 4] -> 16 per 16 values
    dl = d * (2 * s3.reshape(nb, 16) + 1).astype(np.float32)
    qh = b[:, 32:48].reshape(nb, 16, 1) >> np.array([0, 4], np.uint8)               # [nb, 16, 2] -> per 8 values
    idx = b[:, :32].astype(np.uint16) | ((qh.reshape(nb, 32) & 7).astype(np.uint16) << 8)
    delta = np.where(qh.reshape(nb, 32) & 8, -IQ1S_DELTA, IQ1S_DELTA).astype(np.float32)
    vals = _grid("IQ1_M")[idx] + delta[:, :, None]                                    # [nb, 32, 8]
    return (dl.reshape(nb, 16, 1, 1) * vals.reshape(nb, 16, 2, 8)).reshape(nb, QK_K)


def _deq_iq4_nl(b):   # d f16 | qs[16]: non-linear 4-bit levels
    return _f16(b, 0) * KVALUES_IQ4NL[_nibbles(b[:, 2:])]


def _deq_iq4_xs(b):   # d f16 | scales_h u16 (2 bits x 8) | scales_l[4] (4 bits x 8) | qs[128]
    nb = b.shape[0]
    sh = (_u16(b, 2, 1) >> (2 * np.arange(8, dtype=np.uint16))) & 3
    ls = (_nibbles_pairs(b[:, 4:8]) | (sh << 4).astype(np.uint8)).astype(np.int8) - np.int8(32)
    dl = (_f16(b, 0) * ls.astype(np.float32)).reshape(nb, 8, 1)
    q = KVALUES_IQ4NL[(b[:, 8:].reshape(nb, 8, 1, 16) >> np.array([0, 4], np.uint8)[:, None]) & 0xF]
    return (dl * q.reshape(nb, 8, 32)).reshape(nb, QK_K)


def _trits(q: np.ndarray, n: int) -> np.ndarray:
    """TQ1_0: byte q holds n base-3 digits, read as ``((uint8)(q * 3^k) * 3) >> 8`` for k < n."""
    pow3 = np.array([1, 3, 9, 27, 81][:n], np.uint8)
    t = (q[:, None, :] * pow3[:, None]).astype(np.uint8)                           # uint8 wraps like C
    return ((t.astype(np.uint16) * 3) >> 8).reshape(q.shape[0], -1)


def _deq_tq1_0(b):   # qs[48] (5 trits a byte) | qh[4] (4 trits a byte) | d f16
    q = np.concatenate([_trits(b[:, :32], 5), _trits(b[:, 32:48], 5), _trits(b[:, 48:52], 4)], axis=1)
    return (q.astype(np.int8) - np.int8(1)).astype(np.float32) * _f16(b, 52)


def _deq_tq2_0(b):   # qs[64] (element 128h + 32l + m: bits 2l of byte 32h + m) | d f16
    nb = b.shape[0]
    q = (b[:, :64].reshape(nb, 2, 1, 32) >> np.array([0, 2, 4, 6], np.uint8)[:, None]) & 3
    return (q.reshape(nb, QK_K).astype(np.int8) - np.int8(1)).astype(np.float32) * _f16(b, 64)


def _deq_mxfp4(b):   # e E8M0 | qs[16]: kvalues_mxfp4 (E2M1 doubled) x 2^(e-128)
    return KVALUES_DOUBLED[_nibbles(b[:, 1:])] * _e8m0_half(b[:, :1])


def _deq_nvfp4(b):   # d[4] UE4M3 | qs[32]: sub-block s = bytes 8s..8s+7, low nibbles then high
    from .fp8 import decode_ue4m3_ggml

    nb = b.shape[0]
    qs = b[:, 4:].reshape(nb * 4, 8)
    vals = KVALUES_DOUBLED[_nibbles(qs)].reshape(nb, 4, 16)
    return (vals * decode_ue4m3_ggml(b[:, :4])[:, :, None]).reshape(nb, 64)


def _deq_bf16(b):
    return (np.ascontiguousarray(b).view("<u2").astype(np.uint32) << 16).view(np.float32)


# ggml type name -> (ggml-quants.c / ggml.c function it mirrors, dequantizer over [nb, type_size] blocks)
DEQUANTIZERS = {
    "F32": ("ggml.c fp32 row", lambda b: np.ascontiguousarray(b).view("<f4").copy()),
    "F16": ("ggml_fp16_to_fp32_row", lambda b: np.ascontiguousarray(b).view("<f2").astype(np.float32)),
    "BF16": ("ggml_bf16_to_fp32_row", _deq_bf16),
    "Q4_0": ("dequantize_row_q4_0", _deq_q4_0),
    "Q4_1": ("dequantize_row_q4_1", _deq_q4_1),
    "Q5_0": ("dequantize_row_q5_0", _deq_q5_0),
    "Q5_1": ("dequantize_row_q5_1", _deq_q5_1),
    "Q8_0": ("dequantize_row_q8_0", _deq_q8_0),
    "Q1_0": ("dequantize_row_q1_0", _deq_q1_0),
    "Q2_K": ("dequantize_row_q2_K", _deq_q2_k),
    "Q3_K": ("dequantize_row_q3_K", _deq_q3_k),
    "Q4_K": ("dequantize_row_q4_K", _deq_q4_k),
    "Q5_K": ("dequantize_row_q5_K", _deq_q5_k),
    "Q6_K": ("dequantize_row_q6_K", _deq_q6_k),
    "IQ2_XXS": ("dequantize_row_iq2_xxs", _deq_iq2_xxs),
    "IQ2_XS": ("dequantize_row_iq2_xs", _deq_iq2_xs),
    "IQ2_S": ("dequantize_row_iq2_s", _deq_iq2_s),
    "IQ3_XXS": ("dequantize_row_iq3_xxs", _deq_iq3_xxs),
    "IQ3_S": ("dequantize_row_iq3_s", _deq_iq3_s),
    "IQ1_S": ("dequantize_row_iq1_s", _deq_iq1_s),
    "IQ1_M": ("dequantize_row_iq1_m", _deq_iq1_m),
    "IQ4_NL": ("dequantize_row_iq4_nl", _deq_iq4_nl),
    "IQ4_XS": ("dequantize_row_iq4_xs", _deq_iq4_xs),
    "TQ1_0": ("dequantize_row_tq1_0", _deq_tq1_0),
    "TQ2_0": ("dequantize_row_tq2_0", _deq_tq2_0),
    "MXFP4": ("dequantize_row_mxfp4", _deq_mxfp4),
    "NVFP4": ("dequantize_row_nvfp4", _deq_nvfp4),
}


def dequantize_blocks(type_name: str, blocks: np.ndarray) -> np.ndarray:
    """uint8 blocks [nb, type_size] of ggml type TYPE_NAME -> float32 [nb, block_size]."""
    try:
        fn = DEQUANTIZERS[type_name][1]
    except KeyError:
        raise ValueError(f"no dequantizer for ggml type {type_name}") from None
    with np.errstate(invalid="ignore", over="ignore"):   # NaN/inf fp16 scales decode to NaN/inf, as in C
        return fn(np.asarray(blocks, dtype=np.uint8))
