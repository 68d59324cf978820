"""Small helpers to edit checkpoints in place for negative tests."""

from __future__ import annotations

import json
import os
import shutil
import struct

from nvfp4tools.formats._safetensors import parse_header


def tensor_bytes(path: str) -> dict:
    """name -> (dtype, shape, bytes) straight from a folder's safetensors files."""
    out = {}
    for n in sorted(os.listdir(path)):
        if n.endswith(".safetensors"):
            pf = parse_header(path, n)
            with open(os.path.join(path, n), "rb") as fh:
                for k, t in pf.tensors.items():
                    fh.seek(t.offset)
                    out[k] = (t.dtype, t.shape, fh.read(t.nbytes))
    return out


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


# -- estimate tests (tests/test_estimate_*.py) ------------------------------------------------

GiB = 2**30
MiB = 2**20


def gemma4_26b(tmp_path_factory, recipe: str = "all-linear"):
    """A header-only, full-size Gemma-4-26B-A4B ModelOpt checkpoint in one of the published NVFP4
    layouts (``all-linear``, ``mlp-experts``, ``experts-only``), read back (for module fixtures)."""
    from nvfp4tools.formats import read
    from nvfp4tools.synth import synthesize

    p = str(tmp_path_factory.mktemp(recipe))
    synthesize(p, preset="gemma4-26b-a4b", fmt="modelopt", recipe=recipe, header_only=True)
    return read(p)


def estimate_of(ck, gpu="rtx4090", settings=None, **kw):
    """``estimate(CK, GPU, SETTINGS or Settings(**KW), suggest=False)``; GPU is a table key or a GPU."""
    from nvfp4tools.estimate import Settings, estimate
    from nvfp4tools.gpus import get_gpu

    g = get_gpu(gpu) if isinstance(gpu, str) else gpu
    return estimate(ck, g, settings if settings is not None else Settings(**kw), suggest=False)


def report(ck, gpu="rtx4090", settings=None, **kw) -> dict:
    """The report of :func:`estimate_of`."""
    return estimate_of(ck, gpu, settings, **kw).report
