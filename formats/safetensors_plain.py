"""Unquantized (BF16/FP16/FP32) safetensors checkpoints, and the fallback for any safetensors
checkpoint whose quantization method nvfp4tools does not interpret (tensors shown as stored)."""

from __future__ import annotations

import os

from nvfp4tools.errors import UnsupportedError
from nvfp4tools.model import Checkpoint, Finding

from . import register
from ._assemble import Suffix
from ._safetensors import PICKLE_SUFFIXES, declaration, discover
from ._stfamily import build, quant_method
from .base import FormatSpec


def sniff(path: str) -> bool:
    if declaration(path) is not None:
        return True
    # a folder of pickles only: let read() say why it is refused
    return os.path.isdir(path) and any(n.endswith(PICKLE_SUFFIXES) for n in os.listdir(path))


def read(path: str) -> Checkpoint:
    src = discover(path)
    if src is None:
        raise UnsupportedError(f"{path}: no .safetensors files found")
    findings: list[Finding] = []
    qm = quant_method(src)
    if qm:
        findings.append(Finding("unknown_quant_method", "warning",
                                f"config.json quant_method {qm!r} is not interpreted by nvfp4tools; "
                                "tensors are shown with their stored dtypes"))
    tv = src.config.get("transformers_version")
    return build(
        src, format_name="safetensors", suffixes=(Suffix("weight", "data"),), expect=lambda m: None,
        config_label="(no quantization config)", producer="transformers" if tv else None,
        producer_version=str(tv) if tv else None, quant_method=qm, algorithm=None, kv_cache_scheme=None,
        patterns=(), pattern_label="", findings=findings, has_config=False,
    )


def _writer():
    from .plain_writer import PlainWriter
    return PlainWriter()


SPEC = register(FormatSpec("safetensors", sniff, read, "plain safetensors (BF16/FP16/FP32)", writer=_writer))
