"""MXFP4 decode (numpy): OCP Microscaling Formats (MX) v1.0, section 5.3.3 (FP4 E2M1 elements)
with an E8M0 shared scale per block of 32 (section 5.4: 2^(e - 127); 0xFF is NaN).

The byte layout is the one gpt-oss's checkpoints and compressed-tensors' MXFP4 share: codes packed
two per byte along a row, element 2i in the low nibble (transformers integrations/mxfp4.py
``convert_moe_packed_tensors``: ``lut[blk & 0x0F]`` then ``lut[blk >> 4]``), one scale byte per 32
elements of the row.
"""

from __future__ import annotations

import numpy as np

from .fp4 import decode_e2m1, unpack_nibbles_hf

MX_BLOCK = 32          # elements per shared scale (MX v1.0 table 1: k = 32)
E8M0_BIAS = 127
E8M0_NAN = 0xFF


def decode_e8m0(e: np.ndarray) -> np.ndarray:
    """E8M0 bytes -> float32 2^(e - 127); 0xFF -> NaN. Exact: float32 holds 2^-127 as a subnormal."""
    e = np.asarray(e, dtype=np.uint8)
    out = np.ldexp(np.float32(1.0), e.astype(np.int32) - E8M0_BIAS).astype(np.float32)
    out[e == E8M0_NAN] = np.nan
    return out


def dequantize_mxfp4(packed: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """packed uint8 [.., rows, in/2] and E8M0 scales [.., rows, in/32] -> float32 [.., rows, in]."""
    codes = unpack_nibbles_hf(np.asarray(packed, dtype=np.uint8))
    w = decode_e2m1(codes)
    s = decode_e8m0(scales)
    if w.shape[-1] != s.shape[-1] * MX_BLOCK or w.shape[:-1] != s.shape[:-1]:
        raise ValueError(f"MXFP4 codes {list(w.shape)} and scales {list(s.shape)} do not make blocks of {MX_BLOCK}")
    return (w.reshape(s.shape + (MX_BLOCK,)) * s[..., None]).reshape(w.shape)
