"""Reading tensor bytes (numpy) and dequantizing a logical tensor to float32.

Canonical quantized parts come from :mod:`nvfp4tools.convert.canon`, the one decoder convert also
reads through. Used by verify, bench and convert; inspect and estimate never import this module.
"""

from __future__ import annotations

import os

import numpy as np

from .convert.canon import Canon, View, np_dtype
from .errors import FormatError, UnsupportedError
from .formats._ggml_types import BY_NAME
from .model import Checkpoint, TensorInfo, TensorPart


def map_part(root: str, part: TensorPart, dtype) -> np.ndarray:
    """A part's bytes as a flat read-only memory map of DTYPE, after checking the file holds them."""
    path = os.path.join(root, part.file)
    try:
        size = os.path.getsize(path)
    except OSError as e:
        raise FormatError(f"{part.file}: cannot open: {e.strerror}") from None
    if part.offset + part.nbytes > size:
        raise FormatError(f"{part.file}: tensor '{part.key}' needs bytes {part.offset}..{part.offset + part.nbytes} "
                          f"but the file has {size}", hint="the file is truncated; download it again")
    if part.nbytes == 0:
        return np.zeros(0, dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=part.offset,
                     shape=(part.nbytes // np.dtype(dtype).itemsize,))


def load_part(root: str, part: TensorPart) -> np.ndarray:
    """The array of a part in its logical orientation (a transposed part's last two axes swapped
    back), read-only memory-mapped (bf16 widened to float32)."""
    a = _load_stored(root, part)
    return np.swapaxes(a, -1, -2) if part.transposed else a


def _load_stored(root: str, part: TensorPart) -> np.ndarray:
    if part.nbytes == 0:
        map_part(root, part, np.uint8)   # (the file is still checked)
        return np.zeros(part.stored_shape, dtype=np.float32)
    if part.stored_dtype == "BF16":
        from nvfp4tools.kernels_ref.bf16 import bf16_bits_to_f32
        return bf16_bits_to_f32(map_part(root, part, np.uint16)).reshape(part.stored_shape)
    dt = np_dtype(part.stored_dtype)
    if dt is None:  # GGUF block types are handled by their reader
        return map_part(root, part, np.uint8)
    return map_part(root, part, dt).reshape(part.stored_shape)


def scalar_part(root: str, part: TensorPart | None) -> np.ndarray | None:
    if part is None:
        return None
    return np.asarray(load_part(root, part), dtype=np.float32).reshape(-1)


def canonical_nvfp4(ckpt: Checkpoint, t: TensorInfo) -> Canon:
    """NVFP4 tensor T of any reader in canonical form, decoded as convert decodes it
    (:meth:`View.canon <nvfp4tools.convert.canon.View.canon>`) but from the stored scales alone: ``.codes`` (uint8 E2M1 [.., out, in],
    HF element order), ``.scale_bytes`` (E4M3 [.., out, in/16]), ``.global_scale`` and
    ``.input_scale`` (float32 multipliers [1] or [E]; the latter None without a static input scale)."""
    if t.scheme.name != "nvfp4":
        raise UnsupportedError(f"{t.name}: scheme {t.scheme.name} is not NVFP4")
    # as an engine decodes it: a divisor global is fp32(1 / stored), never nvfp4tools' own record
    with View(ckpt, recorded_originals=False) as view:
        return view.canon(t)


def dequantize(ckpt: Checkpoint, t: TensorInfo) -> np.ndarray:
    """Float32 weights of any supported scheme (canonical path)."""
    from nvfp4tools.kernels_ref.nvfp4 import NVFP4Tensor, dequantize_nvfp4

    s = t.scheme
    data = t.part("data")
    if data is not None and data.stored_dtype in GGML_BLOCK_TYPES:
        return _dequant_ggml(ckpt, t)
    if s.name == "nvfp4":
        c = canonical_nvfp4(ckpt, t)
        g = c.global_scale
        if g.size == 1:
            return dequantize_nvfp4(NVFP4Tensor(c.packed, c.scale_bytes, g[0]))
        out = np.empty(t.shape, np.float32)
        for e in range(t.shape[0]):
            out[e] = dequantize_nvfp4(NVFP4Tensor(c.packed[e], c.scale_bytes[e], g[e]))
        return out
    if s.name == "mxfp4" and t.part("block_scale") is not None:
        # codes [.., out, in/2] (gpt-oss: [.., out, in/32, 16], the same bytes), E8M0 scales [.., out, in/32]
        from nvfp4tools.kernels_ref.mxfp4 import dequantize_mxfp4

        codes = np.asarray(load_part(ckpt.root, data), dtype=np.uint8).reshape(t.shape[:-1] + (t.shape[-1] // 2,))
        sc = np.asarray(load_part(ckpt.root, t.part("block_scale")), dtype=np.uint8)
        return dequantize_mxfp4(codes, sc.reshape(t.shape[:-1] + (-1,)))
    if s.element.startswith("int") and t.part("data").stored_dtype == "I32":
        return _dequant_ct_int(ckpt, t)
    if s.element == "int8" and data.stored_dtype == "I8" and t.part("block_scale") is not None \
            and t.part("zero_point") is None:
        # compressed-tensors int-quantized, symmetric: w = q * scale of its group (or channel)
        q = np.asarray(load_part(ckpt.root, data), dtype=np.float32)
        scale = np.asarray(load_part(ckpt.root, t.part("block_scale")), dtype=np.float32)
        scale = scale.reshape(q.shape[:-1] + (-1,))
        return (q * np.repeat(scale, q.shape[-1] // scale.shape[-1], axis=-1)).reshape(t.shape)
    if not s.quantized:
        return np.asarray(load_part(ckpt.root, t.part("data")), dtype=np.float32).reshape(t.shape)
    raise UnsupportedError(f"{t.name}: dequantizing scheme {s.name} is not supported yet",
                           hint="supported: nvfp4, mxfp4, compressed-tensors int4/int8 pack-quantized, "
                                "bf16/fp16/fp32, every GGUF block type")


# GGUF block types decoded by kernels_ref.ggml_quants (the float types load as numpy dtypes)
GGML_BLOCK_TYPES = frozenset(BY_NAME) - {"F32", "F16", "BF16", "F64", "I8", "I16", "I32", "I64"}
_CHUNK_BLOCKS = 1 << 14   # blocks decoded at a time: bounds the temporaries (~2 MiB of output each)


def dequantize_ggml(type_name: str, raw: np.ndarray, n_elements: int, what: str = "tensor") -> np.ndarray:
    """Flat bytes of ggml type TYPE_NAME -> float32 [n_elements], decoded in chunks of blocks (WHAT
    names the tensor in errors)."""
    from nvfp4tools.kernels_ref.ggml_quants import DEQUANTIZERS, dequantize_blocks

    if type_name not in DEQUANTIZERS:
        raise UnsupportedError(f"{what}: dequantizing ggml type {type_name} is not supported",
                               hint=f"supported: {', '.join(DEQUANTIZERS)}")
    block, tsize = BY_NAME[type_name]
    blocks = np.asarray(raw, dtype=np.uint8).reshape(-1, tsize)
    if blocks.shape[0] * block != n_elements:
        raise FormatError(f"{what}: {blocks.shape[0]} {type_name} blocks hold {blocks.shape[0] * block} elements, "
                          f"the tensor has {n_elements}")
    out = np.empty((blocks.shape[0], block), np.float32)
    for i in range(0, blocks.shape[0], _CHUNK_BLOCKS):
        out[i:i + _CHUNK_BLOCKS] = dequantize_blocks(type_name, blocks[i:i + _CHUNK_BLOCKS])
    return out.reshape(-1)


def _dequant_ggml(ckpt: Checkpoint, t: TensorInfo) -> np.ndarray:
    """A GGUF tensor as llama.cpp computes with it: the blocks decoded by ggml's formula, then an
    NVFP4 ``.scale`` sidecar (per tensor, or [E] per expert) multiplied in, as llama.cpp multiplies
    the matmul's output by it (``ggml_mul`` after ``ggml_mul_mat``)."""
    data = t.part("data")
    w = dequantize_ggml(data.stored_dtype, load_part(ckpt.root, data), t.n_elements, t.name).reshape(t.shape)
    g = scalar_part(ckpt.root, t.part("global_scale"))
    if g is not None:
        w = w * (g.reshape((-1,) + (1,) * (len(t.shape) - 1)) if g.size > 1 else g[0])
    return w


def expert_slice(t: TensorInfo, e: int) -> TensorInfo | None:
    """Expert E of a stacked [E, out, in] tensor as a 2-D tensor whose parts point at that expert's
    bytes only (no copy), or None when a part is not laid out expert-major (it cannot be sliced).
    Parts without the expert dimension (one per-tensor scale shared by every expert) are kept."""
    n = t.n_experts_fused
    if not n or len(t.shape) != 3 or not 0 <= e < n:
        return None
    parts = []
    for p in t.parts:
        if p.stored_shape and p.stored_shape[0] == n and p.nbytes % n == 0:
            per = p.nbytes // n
            parts.append(p._replace(offset=p.offset + e * per, nbytes=per, stored_shape=p.stored_shape[1:]))
        elif p.nbytes > 0 and p.stored_shape and p.stored_shape[0] == n:
            return None
        else:
            parts.append(p)
    return TensorInfo.fast(t.name, t.shape[1:], t.scheme, tuple(parts), t.role, t.proj, t.layer, t.stack, e, None)


def _dequant_ct_int(ckpt: Checkpoint, t: TensorInfo) -> np.ndarray:
    from nvfp4tools.kernels_ref.int4 import unpack_int32_to_int4, unpack_int32_to_int8

    bits = int(t.scheme.element[3:])
    if bits not in (4, 8) or (bits == 8 and t.part("zero_point") is not None):
        raise UnsupportedError(f"{t.name}: int{bits} pack-quantized dequantization is not supported yet")
    out_f, in_f = t.shape[-2], t.shape[-1]
    unpack = unpack_int32_to_int4 if bits == 4 else unpack_int32_to_int8
    q = unpack(np.asarray(load_part(ckpt.root, t.part("data"))), in_f).astype(np.float32)
    scale = np.asarray(load_part(ckpt.root, t.part("block_scale")), dtype=np.float32)
    zp_part = t.part("zero_point")
    g_part = t.part("g_idx")
    if g_part is not None:
        gidx = np.asarray(load_part(ckpt.root, g_part)).astype(np.int64)
    else:
        group = in_f // scale.shape[-1]
        gidx = np.arange(in_f) // group
    zp = 0.0
    if zp_part is not None:
        # zero points are packed along the output dimension (transpose, pack, transpose back)
        z = np.asarray(load_part(ckpt.root, zp_part))
        zp = unpack_int32_to_int4(z.T, out_f).T.astype(np.float32)[:, gidx]
    return (q - zp) * scale[:, gidx]
