"""Small helpers to edit checkpoints in place for negative tests."""

from __future__ import annotations

import json
import os
import shutil
import struct

from nvfp4tools.formats._safetensors import parse_header


def copy_ckpt(src: str, dst) -> str:
    dst = str(dst)
    shutil.copytree(src, dst)
    return dst


def locate(ckpt: str, key: str):
    for name in sorted(os.listdir(ckpt)):
        if name.endswith(".safetensors"):
            pf = parse_header(ckpt, name)
            if key in pf.tensors:
                return os.path.join(ckpt, name), pf.tensors[key]
    raise KeyError(key)


def poke(ckpt: str, key: str, data: bytes, at: int = 0) -> None:
    path, t = locate(ckpt, key)
    with open(path, "r+b") as fh:
        fh.seek(t.offset + at)
        fh.write(data)


def poke_f32(ckpt: str, key: str, value: float) -> None:
    poke(ckpt, key, struct.pack("<f", value))


def edit_json(path: str, fn) -> None:
    with open(path) as fh:
        data = json.load(fh)
    fn(data)
    with open(path, "w") as fh:
        json.dump(data, fh)


def zero_part(ckpt: str, part) -> None:
    """Overwrite one stored part (a TensorPart) with zero bytes."""
    with open(os.path.join(ckpt, part.file), "r+b") as fh:
        fh.seek(part.offset)
        fh.write(b"\0" * part.nbytes)
