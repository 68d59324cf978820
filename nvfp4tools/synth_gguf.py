"""Synthetic GGUF files in llama.cpp's layout (gemma4 names and metadata), written with the gguf
package's writer. Q4_0 / Q8_0 / BF16 linears; header-only (sparse) or real quantized values.

Names follow gguf-py's GEMMA4 tensor map (``get_tensor_name_map``) plus the entries llama.cpp's
converter special-cases (``router.scale`` -> ``ffn_gate_inp.scale``, ``router.per_expert_scale`` ->
``ffn_down_exps.scale``); per-expert weights are stacked ``[E, out, in]``. The vision tower goes
to a separate mmproj file in llama.cpp and is not written.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from .errors import UsageError
from .synth import PRESETS, _layers

GGUF_TYPES = ("q4_0", "q8_0", "bf16")


def _gguf_name(hf: str, tmap) -> str | None:
    n = hf.replace("model.language_model.", "model.")
    if n.endswith(".router.scale"):
        return n.replace("model.layers.", "blk.").replace(".router.scale", ".ffn_gate_inp.scale")
    if n.endswith(".router.per_expert_scale"):
        return n.replace("model.layers.", "blk.").replace(".router.per_expert_scale", ".ffn_down_exps.scale")
    suffix = ""
    for s in (".weight", ".bias"):
        if n.endswith(s):
            n, suffix = n[: -len(s)], s
    g = tmap.get_name(n)
    if g is None:
        return None
    return g + (".weight" if suffix or not g.endswith((".scale",)) else "")


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
        name = _gguf_name(hf + (".weight" if lrole else ""), tmap)
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
    a = "gemma4."
    lt = t["layer_types"]
    w.add_uint32(a + "block_count", L)
    w.add_uint32(a + "context_length", t["max_position_embeddings"])
    w.add_uint32(a + "embedding_length", t["hidden_size"])
    w.add_uint32(a + "feed_forward_length", t["intermediate_size"])
    w.add_uint32(a + "attention.head_count", t["num_attention_heads"])
    w.add_array(a + "attention.head_count_kv",
                [t["num_global_key_value_heads"] if x == "full_attention" else t["num_key_value_heads"] for x in lt])
    w.add_uint32(a + "attention.key_length", t["global_head_dim"])
    w.add_uint32(a + "attention.value_length", t["global_head_dim"])
    w.add_uint32(a + "attention.key_length_swa", t["head_dim"])
    w.add_uint32(a + "attention.value_length_swa", t["head_dim"])
    w.add_uint32(a + "attention.sliding_window", t["sliding_window"])
    w.add_array(a + "attention.sliding_window_pattern", [x == "sliding_attention" for x in lt])
    w.add_float32(a + "attention.layer_norm_rms_epsilon", 1e-6)
    w.add_float32(a + "rope.freq_base", 1_000_000.0)
    w.add_float32(a + "rope.freq_base_swa", 10_000.0)
    w.add_uint32(a + "embedding_length_per_layer_input", 0)
    w.add_uint32(a + "expert_count", t["num_experts"])
    w.add_uint32(a + "expert_used_count", t["top_k_experts"])
    w.add_uint32(a + "expert_feed_forward_length", t["moe_intermediate_size"])
    w.add_uint32("general.file_type", int(ftype))
    w.add_uint32("general.quantization_version", gguf.GGML_QUANT_VERSION)
    w.add_string("tokenizer.ggml.model", "gemma4")
    w.add_array("tokenizer.ggml.tokens", [f"<t{i}>" for i in range(t["vocab_size"])])

    datas: list[bytes | None] = []
    for name, shape, quant in specs:
        is_norm = name.endswith(("norm.weight", "layer_output_scale.weight", ".scale"))
        if quant:
            tt = T.Q4_0 if qtype == "q4_0" else T.Q8_0
            bs, bb = (32, 18) if qtype == "q4_0" else (32, 34)
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
        return n // 32 * (18 if qtype == "q4_0" else 34)
    is_f32 = len(shape) == 1
    return n * (4 if is_f32 else 2)
