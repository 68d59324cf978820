"""Header-only checkpoints for bench/estimate_figures.py: the tensor names and shapes transformers
gives the model on the meta device (no weights, no memory), stored in the layout the published
checkpoint uses (BF16; gpt-oss MXFP4 experts; FP8 with 128x128 block scales; compressed-tensors
int8 W8A8), written as sparse safetensors files beside the cited config.json.

    build(out_dir, config, layout) -> out_dir

Only transformers and torch (CPU) are needed, and only here: estimate itself reads headers.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable

from nvfp4tools.formats._st_writer import write_safetensors

# Modules a published quantized checkpoint leaves in BF16: the embedding, the output head, norms,
# MoE routers (every recipe below keeps them; each layout names its own extra exclusions).
_KEEP = ("embed_tokens", "lm_head", "norm", ".gate.weight", "router", "layernorm")


def meta_tensors(config: dict[str, Any]) -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) of every parameter (and persistent buffer) of the model transformers builds
    from CONFIG, on the meta device: the names and shapes of the published checkpoint."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = {k: v for k, v in config.items() if k not in ("quantization_config", "architectures", "model_type")}
    hf = AutoConfig.for_model(config["model_type"], **cfg)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(hf)
    out = [(n, tuple(p.shape)) for n, p in model.state_dict().items()]
    if hf.tie_word_embeddings:
        out = [(n, s) for n, s in out if n != "lm_head.weight"]
    return out


def unfuse_experts(tensors):
    """transformers 5 keeps a MoE layer's experts fused ([E, 2I, H] gate_up_proj, [E, H, I]
    down_proj) and maps them at load; DeepSeek, Qwen3-MoE and Mixtral checkpoints store one
    ``experts.{j}.{gate,up,down}_proj.weight`` per expert, which is what this returns."""
    out = []
    for n, s in tensors:
        if n.endswith("mlp.experts.gate_up_proj") and len(s) == 3:
            e, two_i, h = s
            out += [(f"{n[:-len('gate_up_proj')]}{j}.{p}_proj.weight", (two_i // 2, h))
                    for j in range(e) for p in ("gate", "up")]
        elif n.endswith("mlp.experts.down_proj") and len(s) == 3:
            e, h, i = s
            out += [(f"{n[:-len('down_proj')]}{j}.down_proj.weight", (h, i)) for j in range(e)]
        else:
            out.append((n, s))
    return out


def _quantizable(name: str, shape: tuple[int, ...], keep: tuple[str, ...]) -> bool:
    return len(shape) >= 2 and name.endswith("weight") and not any(k in name for k in _KEEP + keep)


def layout_bf16(tensors):
    return [(n, "BF16", s) for n, s in tensors], None


def layout_gpt_oss_mxfp4(tensors):
    """openai/gpt-oss-*: experts as ``{gate_up,down}_proj_blocks`` [E, out, in/32, 16] U8 and
    ``_scales`` [E, out, in/32] U8 (E8M0), biases and everything else BF16 (transformers keeps the
    fused expert parameters as [E, in, out]; the checkpoint stores them [E, out, in])."""
    out = []
    for n, s in tensors:
        if n.endswith(("mlp.experts.gate_up_proj", "mlp.experts.down_proj")):
            e, k, m = s
            out.append((n + "_blocks", "U8", (e, m, k // 32, 16)))
            out.append((n + "_scales", "U8", (e, m, k // 32)))
        else:
            out.append((n, "BF16", s))
    qc = {"quant_method": "mxfp4", "modules_to_not_convert": ["model.layers.*.self_attn", "model.layers.*.mlp.router",
                                                               "model.embed_tokens", "lm_head"]}
    return out, qc


def layout_fp8_block(tensors, keep: tuple[str, ...] = ()):
    """Qwen3-*-FP8 / DeepSeek-V3: every Linear weight F8_E4M3 with an F32 ``weight_scale_inv`` of
    [ceil(out/128), ceil(in/128)] block scales; embedding, head, norms and routers BF16."""
    out = []
    for n, s in tensors:
        if _quantizable(n, s, keep):
            out.append((n, "F8_E4M3", s))
            out.append((n + "_scale_inv", "F32", s[:-2] + (-(-s[-2] // 128), -(-s[-1] // 128))))
        else:
            out.append((n, "BF16", s))
    return out, {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic", "weight_block_size": [128, 128]}


def layout_ct_w8a8_int8(tensors):
    """neuralmagic/RedHatAI *-quantized.w8a8 (compressed-tensors, format int-quantized): Linear
    weights I8 with a per-channel ``weight_scale`` [out, 1] BF16 (llm-compressor's default scale
    dtype is the model's), activations quantized dynamically (no stored input scale); lm_head BF16."""
    out = []
    for n, s in tensors:
        if _quantizable(n, s, ()):
            out.append((n, "I8", s))
            out.append((n[: -len("weight")] + "weight_scale", "BF16", (s[0], 1)))
        else:
            out.append((n, "BF16", s))
    qc = {"quant_method": "compressed-tensors", "format": "int-quantized", "quantization_status": "compressed",
          "ignore": ["lm_head"],
          "config_groups": {"group_0": {"targets": ["Linear"],
                                        "weights": {"num_bits": 8, "type": "int", "symmetric": True,
                                                    "strategy": "channel", "dynamic": False},
                                        "input_activations": {"num_bits": 8, "type": "int", "symmetric": True,
                                                              "strategy": "token", "dynamic": True}}}}
    return out, qc


def layout_awq_gemm(tensors, group: int = 128):
    """AutoAWQ GEMM (w4, group 128, zero point), as TechxGenus/DeepSeek-Coder-V2-Lite-Instruct-AWQ
    stores it: every Linear but the router as ``qweight`` I32 [in, out/8], ``qzeros`` I32
    [in/g, out/8] and ``scales`` F16 [in/g, out]; everything else F16."""
    out = []
    for n, s in tensors:
        if _quantizable(n, s, ()) and len(s) == 2:
            o, i = s
            base = n[: -len("weight")]
            out += [(base + "qweight", "I32", (i, o // 8)), (base + "qzeros", "I32", (i // group, o // 8)),
                    (base + "scales", "F16", (i // group, o))]
        else:
            out.append((n, "F16", s))
    return out, {"quant_method": "awq", "bits": 4, "group_size": group, "zero_point": True, "version": "gemm"}


LAYOUTS: dict[str, Callable] = {"bf16": layout_bf16, "gpt-oss-mxfp4": layout_gpt_oss_mxfp4,
                                "fp8-block": layout_fp8_block, "ct-w8a8-int8": layout_ct_w8a8_int8,
                                "awq-gemm": layout_awq_gemm}


def build(out_dir: str, config: dict[str, Any], layout: str) -> str:
    """Write OUT_DIR/model.safetensors (header only, sparse) and OUT_DIR/config.json."""
    tensors = meta_tensors(config)
    if layout != "gpt-oss-mxfp4":     # gpt-oss ships its experts fused
        tensors = unfuse_experts(tensors)
    specs, qc = LAYOUTS[layout](tensors)
    os.makedirs(out_dir, exist_ok=True)
    write_safetensors(os.path.join(out_dir, "model.safetensors"), specs, lambda name: None)
    cfg = dict(config)
    if qc is not None:
        cfg["quantization_config"] = qc
    with open(os.path.join(out_dir, "config.json"), "w") as fh:
        json.dump(cfg, fh)
    return out_dir


def build_gguf(path: str, config: dict[str, Any], ftype: str) -> str:
    """A header-only llama-architecture GGUF (sparse data section) with the tensor types llama.cpp's
    ``llama-quantize`` gives a whole-model F16 or Q8_0 file: every 2-D weight in FTYPE (token
    embedding and output included: llama_tensor_get_type keeps Q8_0 for them), 1-D tensors F32.
    Names from gguf-py's tensor map, metadata from the writer ``convert --to gguf`` uses."""
    import gguf
    import numpy as np
    from gguf import GGMLQuantizationType as T

    from nvfp4tools.arch import parse_arch
    from nvfp4tools.formats._ggml_types import BY_NAME
    from nvfp4tools.formats.gguf_metadata import metadata
    from nvfp4tools.formats.gguf_writer import _name
    from nvfp4tools.model import Checkpoint

    tensors = meta_tensors(config)
    tmap = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config["num_hidden_layers"])
    w = gguf.GGUFWriter(path, "llama")
    src = Checkpoint(format="synth", source=path, root="", tensors={}, files=(), file_bytes=0, config=config,
                     arch=parse_arch(config))
    metadata(w, src, "llama", int({"f16": gguf.LlamaFileType.MOSTLY_F16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[ftype]))
    w.add_string("tokenizer.ggml.model", "llama")
    w.add_array("tokenizer.ggml.tokens", [f"<t{i}>" for i in range(config["vocab_size"])])
    sizes = []
    for hf, shape in tensors:
        name = _name(tmap, hf)
        if name is None:
            continue
        if len(shape) == 1:
            tt, nbytes, dt, st = T.F32, 4 * shape[0], np.float32, shape
        elif ftype == "f16":
            tt, nbytes, dt, st = T.F16, 2 * shape[0] * shape[1], np.float16, shape
        else:
            bs, bb = BY_NAME["Q8_0"]
            st = (shape[0], shape[1] // bs * bb)
            tt, nbytes, dt = T.Q8_0, st[0] * st[1], np.uint8
        w.add_tensor_info(name, st, np.dtype(dt), nbytes, raw_dtype=tt)
        sizes.append(nbytes)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    w.close()
    with open(path, "r+b") as fh:     # the data section: each tensor padded to the 32-byte alignment
        fh.seek(0, os.SEEK_END)
        start = -(-fh.tell() // 32) * 32
        fh.truncate(start + sum(-(-n // 32) * 32 for n in sizes))
    return path
