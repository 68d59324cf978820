"""Synthetic GGUF files in llama.cpp's layout (gemma4 names and metadata), written with the gguf
package's writer. Q4_0 / Q8_0 / BF16 linears; header-only (sparse) or real quantized values.

Names and architecture metadata come from the same code ``convert --to gguf`` uses
(``formats/gguf_writer.py``); per-expert weights are stacked ``[E, out, in]``. The vision tower goes
to a separate mmproj file in llama.cpp and is not written.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from nvfp4tools.formats.gguf_metadata import metadata
from nvfp4tools.formats.gguf_writer import _name

from .arch import parse_arch
from .errors import UsageError
from .formats._ggml_types import BY_NAME
from .model import Checkpoint
from .synth import PRESETS, _layers

GGUF_TYPES = ("q4_0", "q8_0", "bf16")


def write_gemma4_gguf(out_path: str, *, preset: str = "gemma4-tiny", qtype: str = "q4_0", header_only: bool = False,
                      seed: int = 0) -> dict[str, Any]:
    import gguf
    from gguf import GGMLQuantizationType as T

    from nvfp4tools.kernels_ref.ggml_quants import quantize_q4_0, quantize_q8_0

    if qtype not in GGUF_TYPES:
        raise UsageError(f"unknown GGUF type {qtype!r}", hint=f"known: {', '.join(GGUF_TYPES)}")
    cfg = PRESETS[preset]
    t = cfg["text_config"]
    L = t["num_hidden_layers"]
    tmap = gguf.get_tensor_name_map(gguf.MODEL_ARCH.GEMMA4, L)
    rng = np.random.default_rng(seed)
    # gather tensors, stacking per-expert weights
    specs: list[tuple[str, tuple[int, ...], bool]] = []   # gguf name, torch shape, quantize?
    for hf, shape, lrole in _layers({**cfg, "vision_config": None}, "fused"):
        name = _name(tmap, hf + (".weight" if lrole else ""))
        if name is None:
            raise UsageError(f"no GGUF name for {hf}")
        quant = lrole is not None and qtype != "bf16" and shape[-1] % 32 == 0
        if lrole == "experts" and name.endswith("ffn_gate_up_exps.weight"):
            e, two_i, h = shape
            for part in ("gate", "up"):
                specs.append((name.replace("gate_up", part), (e, two_i // 2, h), quant))
            continue
        specs.append((name, shape, quant))
    ftype = {"q4_0": gguf.LlamaFileType.MOSTLY_Q4_0, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
             "bf16": gguf.LlamaFileType.MOSTLY_BF16}[qtype]
    w = gguf.GGUFWriter(out_path, "gemma4")
    # the same architecture metadata convert writes, from the same config through parse_arch
    meta_src = Checkpoint(format="synth", source=out_path, root="", tensors={}, files=(), file_bytes=0,
                          config=cfg, arch=parse_arch(cfg))
    metadata(w, meta_src, "gemma4", int(ftype))
    w.add_string("tokenizer.ggml.model", "gemma4")
    w.add_array("tokenizer.ggml.tokens", [f"<t{i}>" for i in range(t["vocab_size"])])

    datas: list[bytes | None] = []
    for name, shape, quant in specs:
        is_norm = name.endswith(("norm.weight", "layer_output_scale.weight", ".scale"))
        if quant:
            tt = T.Q4_0 if qtype == "q4_0" else T.Q8_0
            bs, bb = BY_NAME[qtype.upper()]   # elements and bytes per block
            byte_shape = shape[:-1] + (shape[-1] // bs * bb,)
            nbytes = int(np.prod(byte_shape))
            w.add_tensor_info(name, byte_shape, np.dtype(np.uint8), nbytes, raw_dtype=tt)
            if header_only:
                datas.append(None)
            else:
                x = rng.standard_normal(shape, dtype=np.float32) * 0.02
                q = quantize_q4_0(x) if qtype == "q4_0" else quantize_q8_0(x)
                datas.append(q.tobytes())
        else:
            # llama.cpp writes norms and 1-D tensors as F32, other unquantized weights BF16
            f32 = is_norm or len(shape) == 1
            dt, tt, item = (np.float32, T.F32, 4) if f32 else (np.uint16, T.BF16, 2)
            nbytes = int(np.prod(shape)) * item
            w.add_tensor_info(name, shape, np.dtype(dt), nbytes, raw_dtype=tt)
            if header_only:
                datas.append(None)
            else:
                x = np.ones(shape, np.float32) if is_norm else rng.standard_normal(shape, dtype=np.float32) * 0.02
                datas.append(x.tobytes() if f32 else (x.view(np.uint32) >> 16).astype(np.uint16).tobytes())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    w.close()
    # data section: tensors in order, each padded to the alignment (gguf_writer add_tensor_info)
    align = 32
    with open(out_path, "r+b") as fh:
        fh.seek(0, os.SEEK_END)
        start = -(-fh.tell() // align) * align
        off = 0
        for (name, shape, quant), data in zip(specs, datas):
            if data is not None:
                fh.seek(start + off)
                fh.write(data)
            nb = len(data) if data is not None else _nbytes(shape, quant, qtype)
            off += -(-nb // align) * align
        fh.truncate(start + off)
    return {"path": out_path, "n_tensors": len(specs), "bytes": start + off}


def _nbytes(shape, quant, qtype):
    n = int(np.prod(shape))
    if quant:
        bs, bb = BY_NAME[qtype.upper()]
        return n // bs * bb
    is_f32 = len(shape) == 1
    return n * (4 if is_f32 else 2)
