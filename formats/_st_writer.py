"""Streaming safetensors writer: header first, then one tensor at a time (bounded memory).

A tensor whose producer returns None is left as a hole (a sparse region on most file systems),
so header-only checkpoints of full-size models cost no disk.
"""

from __future__ import annotations

import json
import os
from typing import Callable, Sequence

from ._dtypes import DTYPE_BITS

TensorSpec = tuple[str, str, tuple[int, ...]]  # name, safetensors dtype, shape


def shard_file_name(i: int, n: int) -> str:
    """The name transformers gives shard I (from 1) of N: ``model.safetensors`` when N is 1, else
    ``model-0000I-of-0000N.safetensors``."""
    return "model.safetensors" if n == 1 else f"model-{i:05d}-of-{n:05d}.safetensors"


def nbytes_of(dtype: str, shape: Sequence[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n * DTYPE_BITS[dtype] // 8


def write_safetensors(path: str, specs: Sequence[TensorSpec], produce: Callable[[str], bytes | None],
                      metadata: dict[str, str] | None = None) -> int:
    """Write ``specs`` in order; returns the file size. ``produce(name)`` gives the bytes or None."""
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = metadata
    offset = 0
    for name, dtype, shape in specs:
        n = nbytes_of(dtype, shape)
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * ((-len(blob)) % 8)  # align the data buffer to 8 bytes, as safetensors does
    total = 8 + len(blob) + offset
    with open(path, "wb") as fh:
        fh.write(len(blob).to_bytes(8, "little"))
        fh.write(blob)
        base = 8 + len(blob)
        for name, dtype, shape in specs:
            data = produce(name)
            if data is None:
                continue
            n = nbytes_of(dtype, shape)
            if len(data) != n:
                raise ValueError(f"{name}: producer gave {len(data)} bytes, header says {n}")
            start = header[name]["data_offsets"][0]  # type: ignore[index]
            fh.seek(base + start)
            fh.write(data)
        fh.truncate(total)
    return total


def write_index(root: str, weight_map: dict[str, str], total_size: int) -> None:
    with open(os.path.join(root, "model.safetensors.index.json"), "w") as fh:
        json.dump({"metadata": {"total_size": total_size}, "weight_map": weight_map}, fh, indent=2)
