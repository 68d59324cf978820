"""Actions into bytes: the one encoder every writer uses.

An action is worked through in :class:`Piece`\\ s, blocks of source rows of bounded size, so the
memory a conversion needs does not grow with the model (a stacked expert tensor is written one
expert and one row block at a time). Each piece is decoded to a :class:`~.canon.Canon` and encoded
into every row-shaped output part at its byte offset; per-tensor scalars are worked out once per
action. Parts whose bytes are the source's own come back as :class:`CopyFrom` ranges, copied in
the kernel.
"""

from __future__ import annotations

import math
import os
import struct
from dataclasses import dataclass
from typing import Iterator

from nvfp4tools.errors import UnsupportedError
from nvfp4tools.formats.layouts import Out
from nvfp4tools.model import TensorInfo

from . import scales
from .canon import Canon, View, llama_permutation, unpermute
from .plan import Action, Kind, MLASplit, Rearrange

BLOCK_BYTES = 32 * 2**20   # source bytes decoded at once, at most (unless one row is larger)

# output `what` -> the source part holding the same bytes, when the dtypes agree
_SAME_BYTES = {"codes": "data", "scales": "block_scale", "int4": "data", "int4_scales": "block_scale", "raw": "data",
               "nvfp4_blocks": "data", "q4_0_blocks": "data"}


@dataclass(frozen=True)
class CopyFrom:
    """A byte range of a source file, copied in the kernel (copy_file_range) when possible."""

    path: str
    offset: int
    nbytes: int

    def __len__(self) -> int:
        return self.nbytes


@dataclass(frozen=True)
class Piece:
    tensor: str                       # source tensor
    expert: int | None                # its expert (3-D sources)
    rows: tuple[int, int] | None      # its rows (None: all)
    out_row: int                      # first output row, counted over every leading dimension


def _row_blocks(t: TensorInfo, n_rows: int, start: int = 0) -> list[tuple[int, int]]:
    per_row = max(1, t.nbytes // max(1, _all_rows(t)))
    step = max(1, BLOCK_BYTES // per_row)
    return [(a, min(a + step, start + n_rows)) for a in range(start, start + n_rows, step)]


def _all_rows(t: TensorInfo) -> int:
    n = 1
    for d in t.shape[:-1]:
        n *= d
    return n


def pieces(a: Action, view: View) -> Iterator[Piece]:
    """The source row blocks of action A, with where each lands in the output."""
    tensors = view.ckpt.tensors
    if a.kind in (Kind.GENERATE, Kind.RESTORE):
        return
    if a.kind == Kind.MERGE:   # one piece per expert (or one): its sources are read together (merged())
        t = tensors[a.sources[0]]
        if len(t.shape) == 3 and a.merge == "interleave_rows":
            per = 2 * t.shape[-2] * t.shape[-1] // max(1, a.outs[0].shape[-1])
            for e in range(t.shape[0]):
                yield Piece(t.name, e, None, e * per)
        else:
            yield Piece(t.name, None, None, 0)
        return
    if a.kind == Kind.STACK:
        per = 2 if a.stack == "gate_up" else 1
        out_rows = sum(tensors[n].shape[-2] for n in a.sources[:per])
        for i, name in enumerate(a.sources):
            t = tensors[name]
            e, half = divmod(i, per)
            base = e * out_rows + (tensors[a.sources[per * e]].shape[-2] if half else 0)
            for r0, r1 in _row_blocks(t, t.shape[-2]):
                yield Piece(name, None, (r0, r1), base + r0)
        return
    t = tensors[a.sources[0]]
    if a.rearrange is not None and len(t.shape) == 3:   # one expert at a time: memory bounded by one expert
        per = math.prod(rearranged_shape(t.shape[1:], a.rearrange)[:-1])
        for e in range(t.shape[0]):
            yield Piece(t.name, e, None, e * per)
        return
    whole = a.permute_heads is not None or a.kind == Kind.QUANTIZE or a.mla is not None or \
        a.rearrange is not None or len(t.shape) < 2
    if a.kind == Kind.SPLIT and a.rows is not None and a.mla is None:
        experts = [a.rows.expert] if a.rows.expert is not None else \
            (list(range(t.shape[0])) if len(t.shape) == 3 else [None])
        n = a.rows.stop - a.rows.start
        for k, e in enumerate(experts):
            for r0, r1 in _row_blocks(t, n, a.rows.start):
                yield Piece(t.name, e, (r0, r1), k * n + r0 - a.rows.start)
        return
    if whole:
        yield Piece(t.name, None, None, 0)
        return
    experts = list(range(t.shape[0])) if len(t.shape) == 3 else [None]
    for e in experts:
        for r0, r1 in _row_blocks(t, t.shape[-2]):
            yield Piece(t.name, e, (r0, r1), (e or 0) * t.shape[-2] + r0)


def merged(a: Action, view: View, p: Piece) -> Canon:
    """MERGE action A's output for piece P (one expert, or all): its unquantized sources combined.

    * ``mla_kv_b``: attn_k_b [n_head, r, nope] and attn_v_b [n_head, v, r] -> kv_b_proj
      [n_head * (nope + v), r] (the inverse of :class:`~.plan.MLASplit`);
    * ``interleave_rows``: gpt-oss gate and up experts [E, I, H] -> gate_up_proj [E, H, 2I], rows
      interleaved (gate 0::2, up 1::2) then transposed (the inverse of the GGUF writer's Rearrange);
    * ``interleave_cols``: their biases [E, I] -> [E, 2I], interleaved."""
    import numpy as np
    from dataclasses import replace

    parts = [view.canon(view.ckpt.tensors[n], p.expert) for n in a.sources]
    if any(c.kind != "raw" for c in parts):
        raise UnsupportedError(f"{a.sources[0]}: only unquantized tensors can be merged exactly")
    arrays = [c.array for c in parts]
    if a.merge == "mla_kv_b":
        k, v = arrays
        out = np.concatenate([np.swapaxes(k, -1, -2), v], axis=-2)
        out = out.reshape(-1, out.shape[-1])
    elif a.merge in ("interleave_rows", "interleave_cols"):
        g, u = arrays
        axis = -2 if a.merge == "interleave_rows" else -1
        shape = list(g.shape)
        shape[axis] *= 2
        out = np.empty(shape, g.dtype)
        sl = [slice(None)] * out.ndim
        sl[axis] = slice(0, None, 2)
        out[tuple(sl)] = g
        sl[axis] = slice(1, None, 2)
        out[tuple(sl)] = u
        if a.merge == "interleave_rows":
            out = np.swapaxes(out, -1, -2)
    else:
        raise ValueError(f"unknown merge {a.merge!r}")
    out = np.ascontiguousarray(out)
    return replace(parts[0], array=out, shape=out.shape)


def read_piece(a: Action, view: View, p: Piece) -> Canon:
    """The canonical block of source rows P, as the action transforms it (permuted rows)."""
    if a.kind == Kind.MERGE:
        return merged(a, view, p)
    t = view.ckpt.tensors[p.tensor]
    c = view.canon(t, p.expert, p.rows)
    if a.permute_heads is not None:
        perm = llama_permutation(t.shape[-2] if len(t.shape) >= 2 else t.shape[0], a.permute_heads)
        c = c.rows_permuted(unpermute(perm) if a.unpermute else perm)
    if a.mla is not None:
        c = mla_part(c, a.mla)
    if a.rearrange is not None:
        c = rearranged(c, a.rearrange)
    return c


def rearranged_shape(shape: tuple[int, ...], r: Rearrange) -> tuple[int, ...]:
    s = list(shape)
    if r.transpose:
        s[-1], s[-2] = s[-2], s[-1]
    s[r.axis] = len(range(r.start, s[r.axis], r.step))
    return tuple(s)


def rearranged(c: Canon, r: Rearrange) -> Canon:
    """C's values as :class:`~.plan.Rearrange` R orders them (unquantized tensors only: a 4-bit
    tensor's blocks run along its input axis and do not survive a transpose)."""
    import numpy as np
    from dataclasses import replace

    if c.kind != "raw":
        raise UnsupportedError(f"{c.name}: only an unquantized tensor can be transposed or interleaved exactly")
    a = c.array
    if r.transpose:
        a = np.swapaxes(a, -1, -2)
    idx = [slice(None)] * a.ndim
    idx[r.axis] = slice(r.start, None, r.step)
    a = np.ascontiguousarray(a[tuple(idx)])
    return replace(c, array=a, shape=a.shape)


def mla_part(c: Canon, m: MLASplit) -> Canon:
    """attn_k_b or attn_v_b of a whole unquantized kv_b_proj (see :class:`~.plan.MLASplit`): the same
    values, rearranged; a quantized kv_b has no exact transposed form (the planner refuses it)."""
    import numpy as np
    from dataclasses import replace

    if c.kind != "raw":
        raise UnsupportedError(f"{c.name}: an MLA kv_b_proj must be unquantized to be split exactly")
    r = c.array.shape[-1]
    kv = c.array.reshape(m.n_head, m.nope + m.v, r)
    if m.part == "k":
        out = np.ascontiguousarray(kv[:, : m.nope, :].transpose(0, 2, 1))
    else:
        out = np.ascontiguousarray(kv[:, m.nope:, :])
    return replace(c, array=out, shape=out.shape)


# numpy is imported in the functions that make arrays, not with the module: a conversion that only
# copies (ModelOpt <-> compressed-tensors) starts its kernel copies before numpy is loaded

# -- row-shaped parts ----------------------------------------------------------------------------

def encode_rows(c: Canon, o: Out, name: str) -> bytes:
    """Output part O's bytes for the rows canonical C holds."""
    import numpy as np

    w = o.what
    if w == "codes":
        return np.ascontiguousarray(_need(c, "nvfp4", o, name).packed).tobytes()
    if w == "scales":
        return np.ascontiguousarray(_need(c, "nvfp4", o, name).scale_bytes, np.uint8).tobytes()
    if w == "nvfp4_blocks":
        from nvfp4tools.kernels_ref.fp4 import gguf_nvfp4_blocks
        c = _need(c, "nvfp4", o, name)
        return gguf_nvfp4_blocks(c.packed, c.scale_bytes).tobytes()
    if w == "q4_0_blocks":
        return _q4_0_bytes(_need(c, "int4", o, name), name)
    if w == "int4":
        from nvfp4tools.kernels_ref.int4 import pack_int4_to_int32
        return pack_int4_to_int32(_need(c, "int4", o, name).q).tobytes()
    if w == "int4_scales":
        c = _need(c, "int4", o, name)
        return _scales_as(c.group_scales, c.scale_dtype, o.dtype, name)
    if w == "int8":   # pack-quantized: four int8 per int32 word (layouts.CTLayout.int8)
        from nvfp4tools.kernels_ref.int4 import pack_int8_to_int32
        return pack_int8_to_int32(_need(c, "int8", o, name).q).tobytes()
    if w == "int8_scales":
        c = _need(c, "int8", o, name)
        return _scales_as(c.group_scales, c.scale_dtype, o.dtype, name)
    if w == "raw":
        return _cast_exact(_need(c, "raw", o, name), o.dtype, name)
    raise ValueError(f"{o.key}: {w} is not a row-shaped part")


def _need(c: Canon, kind: str, o: Out, name: str) -> Canon:
    if c.kind != kind:
        raise UnsupportedError(f"{name}: a {c.kind} tensor cannot be written as {o.what} ('{o.key}')")
    return c


def _f16_bits(x: np.ndarray) -> np.ndarray | None:
    import numpy as np

    with np.errstate(over="ignore", invalid="ignore"):
        h = x.astype(np.float16)
    ok = np.array_equal(h.astype(np.float32), x, equal_nan=True)
    return h.view(np.uint16) if ok else None


def as_f32(bits: np.ndarray, dtype: str) -> np.ndarray:
    """Stored float bits (BF16/F16 as uint16, or F32) as float32 values."""
    import numpy as np
    from nvfp4tools.kernels_ref.bf16 import bf16_bits_to_f32
    if dtype == "BF16":
        return bf16_bits_to_f32(bits)
    if dtype == "F16":
        return np.asarray(bits).view(np.float16).astype(np.float32)
    return np.asarray(bits, np.float32)


def _scales_as(s: np.ndarray, have: str, want: str, name: str) -> bytes:
    """Group scales stored as HAVE, in dtype WANT exactly (or refused)."""
    import numpy as np

    if have == want:
        return np.ascontiguousarray(s).tobytes()
    f = as_f32(s, have)
    if want == "F32":
        return f.astype("<f4").tobytes()
    if want == "F16":
        h = _f16_bits(f)
        if h is None:
            raise UnsupportedError(f"{name}: {have} group scales are not all representable in fp16",
                                   hint="this tensor cannot be written with fp16 scales exactly")
        return h.tobytes()
    if want == "BF16":
        from nvfp4tools.kernels_ref.bf16 import f32_to_bf16_bits_exact
        b = f32_to_bf16_bits_exact(f)
        if b is None:
            raise UnsupportedError(f"{name}: {have} group scales are not all bf16 values")
        return b.tobytes()
    raise UnsupportedError(f"{name}: group scales cannot be written as {want}")


def _q4_0_bytes(c: Canon, name: str) -> bytes:
    """int4 group-symmetric -> ggml block_q4_0: nibble = q + 8, d = the group scale in fp16,
    repeated for groups of 64/128 (ggml ``quantize_row_q4_0_ref`` layout)."""
    import numpy as np
    from nvfp4tools.kernels_ref.ggml_quants import q4_0_join

    if c.group % 32:
        raise UnsupportedError(f"{name}: int4 group {c.group} is not a multiple of 32; Q4_0 cannot hold it exactly")
    d16 = np.frombuffer(_scales_as(c.group_scales, c.scale_dtype, "F16", name), np.float16)
    d16 = np.repeat(d16.reshape(c.group_scales.shape), c.group // 32, axis=-1)
    codes = (np.asarray(c.q).astype(np.int16) + 8).astype(np.uint8)
    return q4_0_join(codes, d16).tobytes()


def _cast_exact(c: Canon, want: str, name: str) -> bytes:
    import numpy as np

    a, have = c.array, c.dtype
    if have == want:
        return np.ascontiguousarray(a).tobytes()
    if want == "F32" and have in ("BF16", "F16", "F32"):
        return as_f32(a, have).astype("<f4").tobytes()
    if have == "F32" and want == "BF16":
        from nvfp4tools.kernels_ref.bf16 import f32_to_bf16_bits_exact
        b = f32_to_bf16_bits_exact(np.asarray(a, np.float32))
        if b is not None:
            return b.tobytes()
    if have in ("F32", "BF16") and want == "F16":
        h = _f16_bits(as_f32(a, have))
        if h is not None:
            return h.tobytes()
    raise UnsupportedError(f"{name}: {have} values cannot be written as {want} exactly")


# -- per-tensor scalars ----------------------------------------------------------------------------

def scalar_mults(a: Action, view: View, role: str) -> list[float] | None:
    """The action's global ("global_scale") or input ("input_scale") multipliers, one per output
    expert (or one): stacked members' per expert, a split's own expert, a fold applied."""
    tensors = view.ckpt.tensors
    if a.kind == Kind.STACK:
        per = 2 if a.stack == "gate_up" else 1
        got = [view.mults(tensors[n], role) for n in a.sources]
        if any(g is None for g in got):
            return None
        vals = []
        for e in range(len(a.sources) // per):
            mine = [got[e * per + k][0] for k in range(per)]
            # one fused gate_up tensor holds one global per expert (the planner refused
            # differing ones); for the input scale, engines take the max
            vals.append(max(mine))
    else:
        t = tensors[a.sources[0]]
        vals = view.mults(t, role)
        if vals is None:
            return None
        if a.kind == Kind.SPLIT and a.rows is not None and a.rows.expert is not None and len(vals) > 1:
            vals = [vals[a.rows.expert]]
    if role == "global_scale":
        if a.global_override is not None:
            vals = list(a.global_override)
        elif a.fold is not None:
            import numpy as np

            pes = view.canon(tensors[a.fold])
            f = np.asarray(as_f32(pes.array, pes.dtype), np.float32).reshape(-1)
            vals = [float(np.float32(v) * f[e]) for e, v in enumerate(vals)]
    return vals


def scalar_bytes(a: Action, view: View, o: Out, logical: tuple[int, ...]) -> bytes:
    n = math.prod(o.shape)
    if o.what in ("global", "input"):
        vals = scalar_mults(a, view, "global_scale" if o.what == "global" else "input_scale")
        if vals is None:
            raise UnsupportedError(f"{a.sources[0]}: no {o.what} scale to write to '{o.key}'")
        try:
            return scales.encode(vals, o.convention, n, o.what)
        except ValueError as e:
            raise UnsupportedError(f"{a.sources[0]}: {e} in output '{o.key}'") from None
    if o.what == "shape":
        return struct.pack(f"<{len(logical)}q", *logical)
    if o.what.startswith("kv:"):
        t = view.ckpt.tensors[a.sources[0]]
        name = o.what[3:]
        part = next((p for p in t.parts if p.role == "kv_scale" and p.key.rsplit(".", 1)[-1] == name), None)
        if part is None:
            raise UnsupportedError(f"{t.name}: no {name} to write")
        vals = [scales.f32_round(v) for v in view.values(part)]
        if len(vals) != n:
            raise UnsupportedError(f"{t.name}: {len(vals)} values in '{part.key}', output '{o.key}' holds {n}")
        return struct.pack(f"<{n}f", *vals)
    raise ValueError(f"{o.key}: {o.what} is not a scalar part")


def logical_shape(a: Action, view: View) -> tuple[int, ...]:
    """The logical shape of the action's output tensor (what compressed-tensors' weight_shape holds)."""
    rowed = next((o for o in a.outs if not o.is_scalar), None)
    src = view.ckpt.tensors[a.sources[0]] if a.sources else None
    cols = (src.shape[-1] if src.shape else 1) if src is not None else 0   # a 0-d source (CLIP's logit_scale)
    return tuple(rowed.shape[:-1]) + (cols,) if rowed is not None else ()


# -- the stream ---------------------------------------------------------------------------------

def direct_parts(a: Action, view: View) -> dict[Out, object] | None:
    """Outputs whose bytes are exactly a stored part of the source (None: decoding needed)."""
    if a.kind not in (Kind.COPY, Kind.CAST, Kind.RENIBBLE, Kind.REPACK) or len(a.sources) != 1 \
            or a.permute_heads is not None:
        return None
    t = view.ckpt.tensors[a.sources[0]]
    out = {}
    for o in a.outs:
        role = _SAME_BYTES.get(o.what)
        if role is None:
            continue
        part = t.part(role)  # type: ignore[arg-type]
        if part is None or part.nbytes != o.nbytes or part.stored_dtype != o.dtype:
            return None
        out[o] = part
    return out or None


def chunks(a: Action, view: View, lossy: list | None = None) -> Iterator[tuple[Out, int, object]]:
    """(output part, byte offset inside it, bytes or CopyFrom) for action A."""
    if a.kind in (Kind.GENERATE, Kind.RESTORE):
        yield a.outs[0], 0, a.const or b""
        return
    logical = logical_shape(a, view)
    if a.kind == Kind.QUANTIZE:
        from .lossy import quantized
        gl: list[float] = []
        row = 0
        for name in a.sources:   # stacked members one at a time, each at its rows
            c = quantized(a, view, lossy, name)
            if a.mla is not None:
                c = mla_part(c, a.mla)
            gl += c.global_mult
            for o in a.outs:
                if not o.is_scalar:
                    yield o, row * (o.nbytes // max(1, o.rows)), encode_rows(c, o, name)
            row += max(1, math.prod(c.shape[:-1]))
        for o in a.outs:
            if o.is_scalar:
                yield o, 0, scalar_quantized(a, gl, o, logical)
        return
    direct = direct_parts(a, view)
    rowed = [o for o in a.outs if not o.is_scalar and (direct is None or o not in direct)]
    if direct:
        for o, part in direct.items():
            yield o, 0, CopyFrom(os.path.join(view.ckpt.root, part.file), part.offset, part.nbytes)
    if rowed:
        for p in pieces(a, view):
            c = read_piece(a, view, p)
            for o in rowed:
                yield o, p.out_row * (o.nbytes // max(1, o.rows)), encode_rows(c, o, p.tensor)
    for o in a.outs:
        if o.is_scalar:
            yield o, 0, scalar_bytes(a, view, o, logical)


def scalar_quantized(a: Action, globals_: list[float], o: Out, logical: tuple[int, ...]) -> bytes:
    if o.what == "global":
        return scales.encode(globals_, o.convention, math.prod(o.shape), "global")
    if o.what == "shape":
        return struct.pack(f"<{len(logical)}q", *logical)
    raise UnsupportedError(f"{a.sources[0]}: requantized tensors carry no {o.what}")
