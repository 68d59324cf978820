"""Checking a written output against its source, format-neutrally.

Every exact action's output tensor is re-read through the target's own reader and compared with
the source as the action transformed it: NVFP4 codes and block-scale bytes, int4 values and group
scales (as values), raw tensors by value, and the per-tensor multipliers bit for bit, plus the
stored bytes of every converted scalar (a divisor 1 ulp off whose reciprocal rounds back to the
same multiplier would pass the first check alone).

Parts copied byte for byte are compared by ranges: ``sampled`` compares the first and last 4 KiB
and one 4 KiB window per 64 MiB (the errors a range copy can make move whole ranges, so they
show at the edges); ``full`` compares every byte. Everything transformed is compared in full, one
row block at a time.
"""

from __future__ import annotations

from typing import Callable

from nvfp4tools.errors import FormatError
from nvfp4tools.model import Checkpoint, TensorInfo

from . import scales
from .canon import Canon, View
from .encode import direct_parts, pieces, read_piece, scalar_bytes, scalar_mults, logical_shape, as_f32
from .plan import Action, Kind, Plan

WINDOW = 4 * 2**10
WINDOW_EVERY = 64 * 2**20
CHUNK = 16 * 2**20


def _bug(msg: str) -> FormatError:
    return FormatError(f"verification: {msg} (a bug: please report it with the command line)")


def _windows(nbytes: int, sampled: bool) -> list[tuple[int, int]]:
    if not sampled:
        return [(off, min(CHUNK, nbytes - off)) for off in range(0, nbytes, CHUNK)]
    if nbytes <= 2 * WINDOW:
        return [(0, nbytes)]
    wins = [(0, WINDOW), (nbytes - WINDOW, WINDOW)]
    wins += [(off, WINDOW) for off in range(WINDOW_EVERY, nbytes - WINDOW, WINDOW_EVERY)]
    return wins


def _same_bytes(src: View, out: View, part, q, key: str, sampled: bool) -> None:
    if q.nbytes != part.nbytes:
        raise _bug(f"'{key}' is {q.stored_dtype} ({q.nbytes} bytes) in the output, {part.stored_dtype} "
                   f"({part.nbytes} bytes) in the source")
    for off, n in _windows(part.nbytes, sampled):
        if src.reader.read(part, n, off) != out.reader.read(q, n, off):
            raise _bug(f"bytes of '{key}' differ from the source")


def _bits32(vals) -> bytes:
    """The float32 bits of VALS (as numpy's float32 cast gives them: overflow to infinity)."""
    return b"".join(scales.F32.pack(scales.f32_round(v)) for v in vals)


# numpy is imported where arrays are compared: a conversion whose parts are all copied byte for byte
# checks bytes and scalars only, and never loads it

def _values(c: Canon) -> np.ndarray:
    import numpy as np

    return np.asarray(as_f32(c.array, c.dtype) if c.dtype in ("BF16", "F16", "F32") else c.array,
                      np.float64).reshape(-1)


def _same(a: Canon, b: Canon) -> bool:
    import numpy as np

    if a.kind == "nvfp4":
        return b.kind == "nvfp4" and np.array_equal(a.packed, b.packed) and np.array_equal(a.scale_bytes, b.scale_bytes)
    if a.kind in ("int4", "int8"):
        if b.kind != a.kind or not np.array_equal(a.q, b.q):
            return False
        sa = np.repeat(as_f32(a.group_scales, a.scale_dtype), a.group, axis=-1)
        sb = np.repeat(as_f32(b.group_scales, b.scale_dtype), b.group, axis=-1)
        return np.array_equal(sa, sb)
    if b.kind != "raw":
        return False
    va, vb = _values(a), _values(b)
    return va.shape == vb.shape and np.array_equal(va, vb, equal_nan=True)


def _out_rows(t_out: TensorInfo, out_row: int, n: int) -> tuple[int | None, tuple[int, int] | None]:
    """(expert, rows) of output tensor T_OUT holding N rows from flattened row OUT_ROW."""
    if len(t_out.shape) < 2:
        return None, None
    r = t_out.shape[-2]
    if len(t_out.shape) == 3:
        e, start = divmod(out_row, r)
        return e, (start, start + n)
    return None, (out_row, out_row + n)


def verify_output(p: Plan, src_view: View, out: Checkpoint, mode: str = "sampled",
                  ready: Callable[[Action], None] | None = None) -> int:
    """Compare OUT, the written output, with the source; returns how many tensors were checked.
    READY(action), when given, waits until that action's output bytes are final: each tensor is
    checked as soon as it is written, while later ones are still being copied."""
    out_view = View(out)
    sampled = mode == "sampled"
    checked = 0
    try:
        for a in p.actions:
            if a.kind == Kind.GENERATE or not a.exact:
                continue
            if ready is not None:
                ready(a)
            t_out = out.tensors.get(a.out_name or "")
            if t_out is None:
                raise _bug(f"'{a.out_name}' is missing from the output")
            keys = {q.key: q for q in t_out.parts}
            direct = direct_parts(a, src_view) if a.sources else None
            rowed = [o for o in a.outs if not o.is_scalar and (direct is None or o not in direct)]
            for o, part in (direct or {}).items():
                q = keys.get(o.key)
                if q is None:
                    raise _bug(f"'{o.key}' is missing from the output")
                _same_bytes(src_view, out_view, part, q, o.key, sampled)
            if a.kind == Kind.RESTORE:
                q = keys.get(a.outs[0].key)
                if q is None or out_view.reader.read(q) != a.const:
                    raise _bug(f"restored '{a.outs[0].key}' differs from its record")
                checked += 1
                continue
            if rowed:
                for pc in pieces(a, src_view):
                    c = read_piece(a, src_view, pc)
                    n = c.shape[-2] if len(c.shape) >= 2 else 0
                    # a whole-tensor piece (e.g. an MLA half, [n_head, ...]) compares with the whole output
                    e, rows = (None, None) if tuple(c.shape) == tuple(t_out.shape) and pc.out_row == 0 \
                        else _out_rows(t_out, pc.out_row, n)
                    if not _same(c, out_view.canon(t_out, e, rows)):
                        raise _bug(f"'{pc.tensor}' differs between source and output (rows {pc.rows}, "
                                   f"expert {pc.expert})")
            want = scalar_mults(a, src_view, "global_scale") if any(o.what == "global" for o in a.outs) or \
                t_out.scheme.name == "nvfp4" else None
            if want is not None:
                got = out_view.mults(t_out, "global_scale") or [1.0] * max(1, len(want))
                if _bits32(want) != _bits32(got if len(got) == len(want) else got * len(want)):
                    raise _bug(f"global scale of '{a.out_name}' differs")
            logical = logical_shape(a, src_view)
            for o in a.outs:
                if o.is_scalar:
                    q = keys.get(o.key)
                    if q is None:
                        raise _bug(f"'{o.key}' is missing from the output")
                    if out_view.reader.read(q) != scalar_bytes(a, src_view, o, logical):
                        raise _bug(f"'{o.key}' holds other bytes than the source's values give")
            checked += 1
    finally:
        out_view.close()
    return checked
