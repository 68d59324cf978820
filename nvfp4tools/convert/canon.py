"""Canonical quantized tensors: the one in-memory form every reader's tensor is decoded into and
every writer's bytes are encoded from.

* ``nvfp4``: E2M1 codes packed two per byte in HF order (uint8 ``[.., rows, in/2]``, element 2i in
  the low nibble of byte i: the layout ModelOpt and compressed-tensors store, so most conversions
  never unpack them; GGUF's sub-block order is repacked byte-wise, kernels_ref/fp4.py), E4M3
  block-scale bytes (never re-rounded), float32 global multipliers (one, or one per expert), input
  multipliers likewise;
* ``int4``: int8 values in [-8, 7], group scales as stored (16-bit floats kept as their bits),
  the group size (compressed-tensors pack-quantized; GGUF Q4_0 = group 32 with an fp16 scale,
  ``q = nibble - 8``: ggml ``dequantize_row_q4_0``);
* ``int8``: int8 values in [-127, 127] with group scales as stored (compressed-tensors int-quantized
  group-symmetric; GGUF Q8_0 = group 32 with an fp16 scale, ggml ``dequantize_row_q8_0``);
* ``raw``: any other tensor's stored array (16-bit floats as their bits, so bytes copy exactly).

A :class:`View` reads one checkpoint for one conversion: it owns its open files and caches, so
two conversions in one process never share state. Reads can be limited to a block of rows (of one
expert), which bounds memory whatever the tensor size. ``verify`` and ``bench`` read NVFP4 layers
through the same decoding (``tensors.canonical_nvfp4``): one decoder per quantized kind, whoever reads.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace

from nvfp4tools.errors import FormatError, UnsupportedError
from nvfp4tools.formats._dtypes import DTYPES
from nvfp4tools.io import PartReader, decode_values
from nvfp4tools.model import Checkpoint, TensorInfo, TensorPart

from . import scales

# numpy is imported where arrays are made, not with the module: planning and copying never need
# it, so a conversion's kernel copies start before numpy is loaded (style: heavy imports in functions)


def np_dtype(stored_dtype: str, bits: bool = False):
    """The numpy dtype an array of STORED_DTYPE is read as (formats/_dtypes.py: 8-bit floats as their
    bytes), or None where numpy has none (BF16, sub-byte floats, a ggml block type). BITS: 16-bit
    floats as their uint16 bits, so that they copy exactly."""
    import numpy as np

    if bits and stored_dtype in ("BF16", "F16"):
        return np.dtype(np.uint16)
    d = DTYPES.get(stored_dtype)
    return np.dtype(d.numpy) if d is not None and d.numpy else None


@dataclass
class Canon:
    name: str
    kind: str                                  # "nvfp4" | "int4" | "int8" | "raw"
    shape: tuple[int, ...]                     # of this block of rows
    packed: np.ndarray | None = None           # nvfp4: HF-packed codes [.., rows, in/2]
    scale_bytes: np.ndarray | None = None
    global_mult: list[float] = field(default_factory=list)   # per expert covered (or one)
    input_mult: list[float] | None = None
    q: np.ndarray | None = None                # int4
    group_scales: np.ndarray | None = None
    group: int = 0
    scale_dtype: str = ""
    array: np.ndarray | None = None            # raw: stored bits
    dtype: str = ""                            # raw: stored safetensors dtype (or ggml F32/F16/BF16)

    # nvfp4, as arrays (verify, bench and the GPU backends take these)
    @property
    def codes(self) -> np.ndarray:
        """The E2M1 codes unpacked, uint8 [.., rows, in] in HF element order (a new array each time)."""
        from nvfp4tools.kernels_ref.fp4 import unpack_nibbles_hf

        return unpack_nibbles_hf(self.packed)

    @property
    def global_scale(self) -> np.ndarray:
        """The global multipliers, float32 [1] or [E]."""
        import numpy as np

        return np.asarray(self.global_mult, np.float32)

    @property
    def input_scale(self) -> np.ndarray | None:
        """The input multipliers, float32 [1] or [E], or None (no static input scale)."""
        import numpy as np

        return None if self.input_mult is None else np.asarray(self.input_mult, np.float32)

    def rows_permuted(self, perm: np.ndarray) -> "Canon":
        """The same tensor with its rows (axis -2) in the order PERM."""
        import numpy as np

        def take(a):
            if a is None:
                return None
            return np.ascontiguousarray(a[perm] if a.ndim == 1 else a[..., perm, :])
        return replace(self, packed=take(self.packed), scale_bytes=take(self.scale_bytes), q=take(self.q),
                       group_scales=take(self.group_scales), array=take(self.array))


def is_int8_sym(t: TensorInfo) -> bool:
    """int8 group-symmetric, weight-only (compressed-tensors pack-quantized 8-bit in int32 words, or
    int8 as stored by int-quantized; group scales): GGUF Q8_0's exact form."""
    if t.scheme.name == "q8_0":
        return True
    d, bs = t.part("data"), t.part("block_scale")
    return (t.scheme.element == "int8" and t.scheme.symmetric and t.scheme.block_size is not None and d is not None
            and d.stored_dtype in ("I8", "I32") and bs is not None and t.part("zero_point") is None
            and t.scheme.activations is None)


def is_int4_sym(t: TensorInfo) -> bool:
    """int4 group-symmetric without activation order: what pack-quantized and Q4_0 share exactly."""
    if t.scheme.name == "q4_0":
        return True
    d = t.part("data")
    return (t.scheme.element == "int4" and t.scheme.symmetric and d is not None and d.stored_dtype == "I32"
            and t.part("zero_point") is None and t.part("g_idx") is None and t.part("block_scale") is not None)


class View:
    """One checkpoint, read for one conversion (its files, the small scalars, recorded originals)."""

    def __init__(self, ckpt: Checkpoint, recorded_originals: bool = True) -> None:
        """RECORDED_ORIGINALS: take the fp32 originals an earlier nvfp4tools convert recorded for
        divisor globals whose reciprocal does not round-trip (convert: the bit-exact way back); off,
        a divisor is decoded as an engine decodes it, fp32(1 / stored) (verify: what deploys)."""
        self.ckpt = ckpt
        self.reader = PartReader(ckpt.root)
        self.exact = scales.exact_meta(ckpt) if recorded_originals else {}
        self._values: dict[tuple[str, int], list[float]] = {}
        self._bulk: dict[str, tuple[int, int]] = {}   # file -> (descriptor for block reads, size)

    def close(self) -> None:
        self.reader.close()
        for fd, _ in self._bulk.values():
            os.close(fd)
        self._bulk.clear()

    def __enter__(self) -> "View":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _read(self, part: TensorPart, start: int, nbytes: int) -> np.ndarray:
        """NBYTES of PART from byte START, read into a fresh buffer (pread: memory is the block read,
        whatever the file size; a long-lived mmap would keep every page read mapped)."""
        import numpy as np

        fs = self._bulk.get(part.file)
        if fs is None:
            path = os.path.join(self.ckpt.root, part.file)
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError as e:
                raise FormatError(f"{part.file}: cannot open: {e.strerror}") from None
            if hasattr(os, "posix_fadvise"):
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)   # row blocks are read in order
            fs = self._bulk[part.file] = (fd, os.fstat(fd).st_size)
        fd, size = fs
        if part.offset + part.nbytes > size:
            raise FormatError(f"{part.file}: tensor '{part.key}' needs bytes {part.offset}..{part.offset + part.nbytes} "
                              f"but the file has {size}", hint="the file is truncated; download it again")
        buf = np.empty(nbytes, np.uint8)
        view, done = memoryview(buf), 0
        while done < nbytes:
            n = os.preadv(fd, [view[done:]], part.offset + start + done)
            if n <= 0:
                raise FormatError(f"{part.file}: tensor '{part.key}' is truncated")
            done += n
        return buf

    # -- small parts ---------------------------------------------------------------------------
    def values(self, part: TensorPart) -> list[float]:
        k = (part.file, part.offset)
        v = self._values.get(k)
        if v is None:
            v = self._values[k] = decode_values(part, self.reader.read(part))
        return v

    def mults(self, t: TensorInfo, role: str) -> list[float] | None:
        """A tensor's global ("global_scale") or input ("input_scale") multipliers, float32."""
        part = t.part(role)  # type: ignore[arg-type]
        if part is None:
            return None
        return scales.multipliers(part, self.values(part), self.exact)

    # -- arrays ----------------------------------------------------------------------------------
    def stored(self, part: TensorPart, rows: tuple[int, int] | None = None, expert: int | None = None) -> np.ndarray:
        """A part's stored array (bits kept), optionally only rows START:STOP (of EXPERT)."""
        import numpy as np

        bits = np_dtype(part.stored_dtype, bits=True)
        dt = np.dtype(np.uint8) if bits is None else bits
        shape = tuple(part.stored_shape)
        if bits is None:   # a ggml block type: [.., rows, bytes per row]
            nrows = 1
            for d in shape[:-1]:
                nrows *= d
            shape = shape[:-1] + (part.nbytes // max(nrows, 1),) if nrows else (part.nbytes,)
        if part.transposed:   # stored [.., in, out]: rows are columns on disk, read the expert whole
            a = self._read(part, 0, part.nbytes).view(dt).reshape(shape)
            a = np.swapaxes(a[expert] if expert is not None else a, -1, -2)
            return np.ascontiguousarray(a[..., rows[0]:rows[1], :] if rows is not None else a)
        # the selection is one contiguous range: expert E of [E, ..], then rows of a [rows, cols] block
        sub, start = shape, 0
        if expert is not None:
            sub = shape[1:]
            start = expert * int(np.prod(sub, dtype=np.int64))
        if rows is not None and len(sub) <= 2:
            row = sub[-1] if len(sub) == 2 else 1
            start += rows[0] * row
            sub = (rows[1] - rows[0],) + tuple(sub[1:])
            rows = None
        n = int(np.prod(sub, dtype=np.int64))
        a = self._read(part, start * dt.itemsize, n * dt.itemsize).view(dt).reshape(sub)
        if rows is not None:   # rows of every expert of a stacked part: not one range
            a = np.ascontiguousarray(a[..., rows[0]:rows[1], :])
        return a

    def canon(self, t: TensorInfo, expert: int | None = None, rows: tuple[int, int] | None = None) -> Canon:
        """Tensor T (or expert EXPERT of a stacked T, or rows START:STOP of it) in canonical form."""
        import numpy as np

        data = t.part("data")
        if data is None:
            raise FormatError(f"{t.name}: no data part")
        lead = t.shape[0] if len(t.shape) == 3 else 0
        full_rows = t.shape[-2] if len(t.shape) >= 2 else 1
        r = rows if rows is not None and rows != (0, full_rows) else None
        out_shape = (() if expert is not None or not lead else (lead,)) + \
            (((r[1] - r[0]) if r else full_rows, t.shape[-1]) if len(t.shape) >= 2 else tuple(t.shape))
        if t.scheme.name == "nvfp4":
            return self._nvfp4(t, data, expert, r, lead, out_shape)
        if t.scheme.name == "q4_0":
            from nvfp4tools.kernels_ref.ggml_quants import q4_0_split
            blocks = self.stored(data, r, expert)
            codes, d = q4_0_split(blocks.reshape(blocks.shape[:-1] + (-1,)))
            return Canon(t.name, "int4", out_shape, q=(codes.astype(np.int8) - 8).reshape(out_shape),
                         group_scales=np.ascontiguousarray(d.view(np.uint16)).reshape(out_shape[:-1] + (-1,)),
                         group=32, scale_dtype="F16")
        if t.scheme.name == "q8_0":   # ggml block_q8_0: fp16 d, then 32 int8 values (ggml-common.h)
            blocks = self.stored(data, r, expert)
            b = np.ascontiguousarray(blocks).reshape(blocks.shape[:-1] + (-1, 34))
            d = np.ascontiguousarray(b[..., :2]).view(np.uint16).reshape(out_shape[:-1] + (-1,))
            q = np.ascontiguousarray(b[..., 2:]).view(np.int8).reshape(out_shape)
            return Canon(t.name, "int8", out_shape, q=q, group_scales=d, group=32, scale_dtype="F16")
        if is_int8_sym(t):
            bs = t.part("block_scale")
            if data.stored_dtype == "I32":
                from nvfp4tools.kernels_ref.int4 import unpack_int32_to_int8
                q = unpack_int32_to_int8(self.stored(data, r, expert), t.shape[-1])
            else:
                q = self.stored(data, r, expert).view(np.int8)
            return Canon(t.name, "int8", out_shape, q=q.reshape(out_shape), group_scales=self.stored(bs, r, expert),
                         group=t.shape[-1] // bs.stored_shape[-1], scale_dtype=bs.stored_dtype)
        if is_int4_sym(t):
            from nvfp4tools.kernels_ref.int4 import unpack_int32_to_int4
            bs = t.part("block_scale")
            q = unpack_int32_to_int4(self.stored(data, r, expert), t.shape[-1])
            return Canon(t.name, "int4", out_shape, q=q.reshape(out_shape), group_scales=self.stored(bs, r, expert),
                         group=t.shape[-1] // bs.stored_shape[-1], scale_dtype=bs.stored_dtype)
        if not t.scheme.quantized:
            a = self.stored(data, r, expert)
            return Canon(t.name, "raw", out_shape, array=a.reshape(out_shape) if a.size else a,
                         dtype=data.stored_dtype)
        raise UnsupportedError(f"{t.name}: {t.scheme.name} tensors have no canonical form here",
                               hint="lossless conversion covers NVFP4, int4 group-symmetric and Q4_0")

    def _nvfp4(self, t: TensorInfo, data: TensorPart, expert, r, lead, out_shape) -> Canon:
        import numpy as np

        if data.stored_dtype == "NVFP4":
            from nvfp4tools.kernels_ref.fp4 import hf_from_gguf_nvfp4_blocks
            blocks = self.stored(data, r, expert)
            packed, sb = hf_from_gguf_nvfp4_blocks(blocks.reshape(blocks.shape[:-1] + (-1,)))
        else:
            bs = t.part("block_scale")
            if bs is None or t.part("global_scale") is None:
                raise UnsupportedError(f"{t.name}: NVFP4 tensor lacks its block or global scale; cannot decode")
            packed = self.stored(data, r, expert)
            sb = self.stored(bs, r, expert).astype(np.uint8, copy=False)
        n_e = 1 if (expert is not None or not lead) else lead
        g = self.mults(t, "global_scale")
        if g is None:   # a GGUF NVFP4 tensor without a '.scale' sidecar: the global is 1.0
            g = [1.0] * n_e
        inp = self.mults(t, "input_scale")
        if expert is not None:
            g = [g[expert] if len(g) > 1 else g[0]]
            inp = None if inp is None else [inp[expert] if len(inp) > 1 else inp[0]]
        return Canon(t.name, "nvfp4", out_shape, packed=packed.reshape(out_shape[:-1] + (-1,)),
                     scale_bytes=sb.reshape(out_shape[:-1] + (-1,)), global_mult=list(g), input_mult=inp)


def llama_permutation(rows: int, n_head: int) -> np.ndarray:
    """Row order of llama.cpp's Q/K permutation (convert_hf_to_gguf.py, ``LlamaModel.permute``:
    ``w.reshape(n_head, 2, rows // n_head // 2, cols).swapaxes(1, 2).reshape(rows, cols)``): HF's
    rotate-half RoPE pairs rows i and i + d/2 of a head, ggml's normal RoPE pairs 2i and 2i + 1."""
    import numpy as np

    idx = np.arange(rows)
    return idx.reshape(n_head, 2, rows // n_head // 2).swapaxes(1, 2).reshape(rows)


def unpermute(perm: np.ndarray) -> np.ndarray:
    import numpy as np

    inv = np.empty_like(perm)
    inv[perm] = np.arange(perm.size)
    return inv
