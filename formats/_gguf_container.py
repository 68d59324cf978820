"""GGUF container parsing with the checks a hostile file needs (stdlib only, no tensor bytes read).

Layout (ggml ``docs/gguf.md``; gguf-py ``gguf_reader.py``/``gguf_writer.py``): u32 magic "GGUF",
u32 version (2 or 3), u64 tensor_count, u64 kv_count, the KV pairs (``gguf_string`` key = u64
length + UTF-8, u32 value type, value), the tensor infos (name, u32 n_dims, u64 ne[n_dims] with ne0
the contiguous dimension, u32 ggml type, u64 offset relative to the data section), padding to
``general.alignment`` (default 32), then the data. Every count and length is checked against the
bytes left before anything is allocated.
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from nvfp4tools.errors import FormatError, UnsupportedError

from . import validate
from ._ggml_types import GGML_TYPES

GGUF_MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4  # GGML_MAX_DIMS
_SCALAR = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
KEEP_ARRAY = 4096  # arrays longer than this keep only their length (tokenizer vocab, merges) ...
ARRAY_HEAD = 8     # ... and their first items, for inspect --metadata
# GGUF value type id -> name (ggml docs/gguf.md ``gguf_metadata_value_type``, gguf-py ``GGUFValueType``)
VALUE_TYPES = {0: "UINT8", 1: "INT8", 2: "UINT16", 3: "INT16", 4: "UINT32", 5: "INT32", 6: "FLOAT32", 7: "BOOL",
               8: "STRING", 9: "ARRAY", 10: "UINT64", 11: "INT64", 12: "FLOAT64"}


@dataclass
class GGUFTensorInfo:
    name: str
    ne: tuple[int, ...]       # ggml order, ne0 first
    type_id: int
    type_name: str
    offset: int               # absolute byte offset in the file
    nbytes: int
    file: str


@dataclass
class GGUFFile:
    file: str
    size: int
    version: int
    alignment: int
    kv: dict[str, Any] = field(default_factory=dict)
    array_lengths: dict[str, int] = field(default_factory=dict)
    tensors: list[GGUFTensorInfo] = field(default_factory=list)
    types: dict[str, str] = field(default_factory=dict)        # key -> "UINT32", "ARRAY[STRING]", ...
    array_heads: dict[str, list] = field(default_factory=dict)  # first ARRAY_HEAD items of arrays not kept


class _Cursor:
    def __init__(self, buf: Any, rel: str, endian: str) -> None:
        self.buf, self.pos, self.rel, self.e = buf, 0, rel, endian
        self.size = len(buf)

    def need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > self.size:
            raise FormatError(f"{self.rel}: {what} at byte {self.pos} needs {n} bytes but the file ends at "
                              f"{self.size}", hint="the file is truncated or the header lies")

    def unpack(self, fmt: str, what: str) -> Any:
        s = struct.Struct(self.e + fmt)
        self.need(s.size, what)
        v = s.unpack_from(self.buf, self.pos)
        self.pos += s.size
        return v[0] if len(v) == 1 else v

    def string(self, what: str) -> str:
        n = self.unpack("Q", what + " length")
        self.need(n, f"{what} of {n} bytes")
        raw = bytes(self.buf[self.pos:self.pos + n])
        self.pos += n
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise FormatError(f"{self.rel}: {what} at byte {self.pos - n} is not valid UTF-8") from None

    def skip_string(self, what: str) -> None:
        n = self.unpack("Q", what + " length")
        self.need(n, f"{what} of {n} bytes")
        self.pos += n


class _Value(NamedTuple):
    value: Any                # None for an array longer than KEEP_ARRAY
    length: int | None        # array length
    head: list | None         # first ARRAY_HEAD items of an array whose value was not kept
    type: str                 # VALUE_TYPES name; "ARRAY[STRING]" for arrays


def _value(c: _Cursor, vtype: int, key: str, depth: int = 0) -> _Value:
    """A value; long arrays keep their length and first items only; nested arrays are bounded."""
    if vtype in _SCALAR:
        return _Value(c.unpack(_SCALAR[vtype], f"value of '{key}'"), None, None, VALUE_TYPES[vtype])
    if vtype == 8:
        return _Value(c.string(f"string value of '{key}'"), None, None, "STRING")
    if vtype == 9:
        if depth > 2:
            raise FormatError(f"{c.rel}: key '{key}': arrays nested deeper than 3 levels")
        etype = c.unpack("I", f"array type of '{key}'")
        n = c.unpack("Q", f"array length of '{key}'")
        keep = n <= KEEP_ARRAY or key.startswith("nvfp4tools.")
        atype = f"ARRAY[{VALUE_TYPES.get(etype, etype)}]"
        if etype in _SCALAR:
            size = struct.calcsize(_SCALAR[etype])
            c.need(n * size, f"array '{key}' of {n} elements")
            vals = list(struct.unpack_from(f"{c.e}{n if keep else min(n, ARRAY_HEAD)}{_SCALAR[etype]}", c.buf, c.pos))
            c.pos += n * size
            return _Value(vals, n, None, atype) if keep else _Value(None, n, vals, atype)
        if etype == 8:
            # every string takes at least 8 bytes: bound n before walking
            c.need(n * 8, f"array '{key}' of {n} strings")
            if keep:
                return _Value([c.string(f"element of '{key}'") for _ in range(n)], n, None, atype)
            head = [c.string(f"element of '{key}'") for _ in range(ARRAY_HEAD)]
            for _ in range(n - ARRAY_HEAD):
                c.skip_string(f"element of '{key}'")
            return _Value(None, n, head, atype)
        if etype == 9:
            c.need(n * 12, f"array '{key}' of {n} arrays")
            # each element is itself (u32 type, u64 count, elements)
            return _Value([_value(c, 9, key, depth + 1).value for _ in range(n)], n, None, atype)
        raise FormatError(f"{c.rel}: key '{key}': unknown array element type {etype}",
                          hint="known value types: 0..12")
    raise FormatError(f"{c.rel}: key '{key}': unknown value type {vtype}", hint="known value types: 0..12")


def parse_gguf(root: str, rel: str, *, trusted: bool = False) -> GGUFFile:
    # only a regular file inside the checkpoint folder (TRUSTED: the file the user named)
    fh = os.fdopen(validate.open_member(root, rel, trusted=trusted), "rb")
    size = os.fstat(fh.fileno()).st_size
    with fh:
        if size < 24:
            raise FormatError(f"{rel}: truncated file: {size} bytes, a GGUF header needs at least 24")
        buf = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        try:
            return _parse(buf, rel, size)
        finally:
            buf.close()


PREFIX_FIRST = 1 << 22       # bytes of a remote GGUF read first (a header with a 262k-token vocabulary: ~6 MiB)


def parse_gguf_prefix(fetch: Any, rel: str, size: int) -> GGUFFile:
    """The header of a GGUF of SIZE bytes read through FETCH(n) -> its first n bytes (HTTP range
    reads of a Hub file): a prefix that ends inside the header is read again four times longer,
    so only the header travels, never the tensor data."""
    n = min(size, PREFIX_FIRST)
    while True:
        buf = fetch(n)
        if len(buf) != n:
            raise FormatError(f"{rel}: asked for the first {n} bytes, got {len(buf)}", hint="try again")
        try:
            return _parse(buf, rel, size)
        except FormatError as e:
            if n >= size or "the file ends at" not in e.message:
                raise
            n = min(size, n * 4)


def _parse(buf: Any, rel: str, size: int) -> GGUFFile:
    if buf[:4] != GGUF_MAGIC:
        raise FormatError(f"{rel}: bad magic {bytes(buf[:4])!r}, expected b'GGUF'")
    (v_le,) = struct.unpack_from("<I", buf, 4)
    (v_be,) = struct.unpack_from(">I", buf, 4)
    endian = "<"
    version = v_le
    if v_le not in (1, 2, 3) and v_be in (2, 3):
        endian, version = ">", v_be
    if version == 1:
        raise UnsupportedError(f"{rel}: GGUF version 1 is not supported (counts were 32-bit)",
                               hint="re-convert with a current llama.cpp")
    if version not in (2, 3):
        raise UnsupportedError(f"{rel}: GGUF version {version} is not supported (2 and 3 are)")
    c = _Cursor(buf, rel, endian)
    c.pos = 8
    n_tensors = c.unpack("Q", "tensor count")
    n_kv = c.unpack("Q", "KV count")
    # each KV pair needs >= 8 + 4 + 1 bytes, each tensor info >= 8 + 4 + 8 + 4 + 8
    if n_kv * 13 > size - c.pos:
        raise FormatError(f"{rel}: KV count {n_kv} cannot fit in a {size}-byte file")
    if n_tensors * 32 > size - c.pos:
        raise FormatError(f"{rel}: tensor count {n_tensors} cannot fit in a {size}-byte file")
    g = GGUFFile(rel, size, version, DEFAULT_ALIGNMENT)
    for _ in range(n_kv):
        key = c.string("key")
        vtype = c.unpack("I", f"value type of '{key}'")
        if key in g.kv:
            raise FormatError(f"{rel}: duplicate key '{key}'")
        v = _value(c, vtype, key)
        g.kv[key] = v.value
        g.types[key] = v.type
        if v.length is not None:
            g.array_lengths[key] = v.length
        if v.head is not None:
            g.array_heads[key] = v.head
    align = g.kv.get("general.alignment", DEFAULT_ALIGNMENT)
    if not isinstance(align, int) or isinstance(align, bool) or align <= 0 or align & (align - 1):
        raise FormatError(f"{rel}: general.alignment {align!r} is not a positive power of two")
    g.alignment = align
    infos = []
    seen: set[str] = set()
    for _ in range(n_tensors):
        name = c.string("tensor name")
        validate.check_name(name, rel)
        if name in seen:
            raise FormatError(f"{rel}: duplicate tensor name '{name}'")
        seen.add(name)
        nd = c.unpack("I", f"n_dims of '{name}'")
        if nd == 0 or nd > MAX_DIMS:
            raise FormatError(f"{rel}: tensor '{name}' has {nd} dimensions, expected 1..{MAX_DIMS}")
        ne = tuple(c.unpack("Q", f"dimension of '{name}'") for _ in range(nd))
        tid = c.unpack("I", f"type of '{name}'")
        off = c.unpack("Q", f"offset of '{name}'")
        infos.append((name, ne, tid, off))
    data_start = -(-c.pos // align) * align
    spans = []
    for name, ne, tid, off in infos:
        if tid not in GGML_TYPES:
            raise UnsupportedError(f"{rel}: tensor '{name}' has unknown ggml type id {tid}",
                                   hint=f"known ids: {', '.join(str(k) for k in sorted(GGML_TYPES))}")
        tname, block, tbytes = GGML_TYPES[tid]
        n = 1
        for d in ne:
            n *= d
            if n > 1 << 50:
                raise FormatError(f"{rel}: tensor '{name}' shape {list(ne)} has more than 2^50 elements")
        if ne[0] % block:
            raise FormatError(f"{rel}: tensor '{name}' row size {ne[0]} is not a multiple of the {tname} "
                              f"block size ({block})")
        nbytes = n // block * tbytes
        if off % align:
            raise FormatError(f"{rel}: tensor '{name}' offset {off} is not aligned to {align} bytes")
        start = data_start + off
        if start + nbytes > size:
            raise FormatError(f"{rel}: tensor '{name}' data ({nbytes} bytes at {start}) runs past the end of "
                              f"the file ({size} bytes)", hint="the file is truncated")
        spans.append((off, off + nbytes, name))
        g.tensors.append(GGUFTensorInfo(name, ne, tid, tname, start, nbytes, rel))
    spans.sort()
    for (a0, a1, an), (b0, b1, bn) in zip(spans, spans[1:]):
        if b0 < a1:
            raise FormatError(f"{rel}: tensors '{an}' and '{bn}' overlap in the data section")
    return g
