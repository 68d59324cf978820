"""The 128x4 swizzled block-scale layout CUTLASS / FlashInfer FP4 GEMMs consume, and its inverse.

Checkpoints store block scales row-major ``[M, K]`` (M rows, K = in/16); engines swizzle at load
(vLLM ``swizzle_blockscale``; SGLang ``swizzle_blockscale`` / ``unswizzle_blockscale``). Pad M to a
multiple of 128 and K to a multiple of 4 with zeros, then
``reshape(M/128, 4, 32, K/4, 4).permute(0, 3, 2, 1, 4)``: 512-byte tiles of 128 rows x 4 columns,
tiles row-major over (m-tile, k-tile), and inside a tile line ``r32`` holds rows
``r32, r32+32, r32+64, r32+96``.
"""

from __future__ import annotations

import numpy as np


def swizzle_128x4(s: np.ndarray) -> np.ndarray:
    """[M, K] -> flat swizzled bytes of the padded [ceil(M/128)*128, ceil(K/4)*4] matrix."""
    m, k = s.shape
    mp, kp = -(-m // 128) * 128, -(-k // 4) * 4
    pad = np.zeros((mp, kp), dtype=s.dtype)
    pad[:m, :k] = s
    return pad.reshape(mp // 128, 4, 32, kp // 4, 4).transpose(0, 3, 2, 1, 4).reshape(-1)


def unswizzle_128x4(flat: np.ndarray, m: int, k: int) -> np.ndarray:
    """Inverse of :func:`swizzle_128x4`: flat swizzled bytes -> [M, K]."""
    mp, kp = -(-m // 128) * 128, -(-k // 4) * 4
    t = np.asarray(flat).reshape(mp // 128, kp // 4, 32, 4, 4).transpose(0, 3, 2, 1, 4).reshape(mp, kp)
    return t[:m, :k]


def swizzled_offset(m: int, k: int, k_total: int) -> int:
    """Byte offset of element (m, k) in the swizzled layout (``formats.md`` 4.2)."""
    kp = -(-k_total // 4) * 4
    mt, r = divmod(m, 128)
    r4, r32 = divmod(r, 32)
    kt, k4 = divmod(k, 4)
    return ((mt * (kp // 4) + kt) * 32 + r32) * 16 + r4 * 4 + k4
