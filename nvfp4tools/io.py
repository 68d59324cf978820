"""Reading the few bytes inspect needs (per-tensor scales, stored shapes), stdlib only."""

from __future__ import annotations

import math
import os
import struct

from .errors import FormatError
from .formats._dtypes import SCALAR_STRUCT
from .model import TensorPart, canonical_scale

_F32 = struct.Struct("<f")


class PartReader:
    """Reads byte ranges of parts, keeping one open handle per file."""

    def __init__(self, root: str) -> None:
        self.root = root
        self._fh: dict[str, object] = {}

    def _fd(self, rel: str) -> int:
        fd = self._fh.get(rel)
        if fd is None:
            try:
                fd = os.open(os.path.join(self.root, rel), os.O_RDONLY | getattr(os, "O_BINARY", 0))
            except OSError as e:
                raise FormatError(f"{rel}: cannot open: {e.strerror}") from None
            if hasattr(os, "posix_fadvise"):
                # scattered scalar reads: no readahead (on a cold page cache the kernel would
                # otherwise pull 128 KiB of weights around every 4-byte scale)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
            self._fh[rel] = fd
        return fd  # type: ignore[return-value]

    def read(self, part: TensorPart, nbytes: int | None = None, offset: int = 0) -> bytes:
        # pread: one syscall per small read; an mmap costs a page fault per scattered scalar,
        # which measured ~15x slower on a full-size MoE checkpoint (23,000 scales).
        n = part.nbytes if nbytes is None else nbytes
        start = part.offset + offset
        data = os.pread(self._fd(part.file), n, start)
        if len(data) != n:
            raise FormatError(f"{part.file}: tensor '{part.key}' is truncated: wanted {n} bytes at offset "
                              f"{start}, got {len(data)}")
        return data

    def scales(self, part: TensorPart) -> tuple[float, ...]:
        """A per-tensor scale part's values in the model's multiplier convention (see
        :func:`~nvfp4tools.model.canonical_scale`)."""
        if part.nbytes == 4 and part.stored_dtype == "F32":  # ~23,000 per full-size MoE: no generator
            return (canonical_scale(_F32.unpack(self.read(part))[0], part),)
        return tuple(canonical_scale(v, part) for v in self.values(part))

    def values(self, part: TensorPart) -> list[float]:
        """Decode a small float/int part (a per-tensor scale) to Python numbers."""
        return decode_values(part, self.read(part))

    def close(self) -> None:
        for fd in self._fh.values():
            os.close(fd)  # type: ignore[arg-type]
        self._fh.clear()

    def __enter__(self) -> "PartReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def decode_values(part: TensorPart, raw: bytes) -> list[float]:
    """A small float/int part's stored bytes (a per-tensor scale) as Python numbers."""
    if part.nbytes == 4 and part.stored_dtype == "F32":  # the common case: ~23,000 per full-size MoE
        return [_F32.unpack(raw)[0]]
    if part.stored_dtype == "BF16":
        # bf16 is the top half of an fp32
        return [struct.unpack("<f", b"\x00\x00" + raw[i:i + 2])[0] for i in range(0, len(raw), 2)]
    code = SCALAR_STRUCT.get(part.stored_dtype)
    if code is None:
        raise FormatError(f"{part.file}: tensor '{part.key}' has dtype {part.stored_dtype}, "
                          "cannot read it as a scale")
    size = struct.calcsize(code)
    return list(struct.unpack("<%d%s" % (len(raw) // size, code), raw))


def is_bad_scale(v: float) -> bool:
    return not math.isfinite(v) or v <= 0.0
